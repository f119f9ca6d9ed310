package reslimitotel_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/reslimit/reslimit"
)

// threeTenants drives a ledger: acme ran once (5 operations, 1 KiB
// charged, 0.5 s of CPU) and has a run in progress holding 256 bytes;
// beta may make one evaluation, made it, and was refused the second;
// gamma may start one run per 1000 s, started one, and was refused the
// second by the rate.
func threeTenants(t *testing.T) (*reslimit.Ledger, *reslimit.Tracker) {
	t.Helper()
	ledger := mustLedger(t, reslimit.AccountLimits{}, reslimit.WithTenantLimits(func(tenant string) reslimit.AccountLimits {
		switch tenant {
		case "beta":
			return reslimit.AccountLimits{MaxEvaluations: 1}
		case "gamma":
			return reslimit.AccountLimits{EvaluationsPerSecond: 0.001, EvaluationBurst: 1}
		}
		return reslimit.AccountLimits{MaxEvaluations: 10, MaxCPUTime: 2 * time.Second}
	}))
	acme := ledger.Account("acme")
	run(t, acme, 5, 1024, 500*time.Millisecond)
	live, err := acme.Begin(reslimit.Limits{})
	require.NoError(t, err)
	require.NoError(t, live.TrackMemory(256))
	t.Cleanup(func() { live.End() })

	beta := ledger.Account("beta")
	run(t, beta, 1, 0, 0)
	_, err = beta.Begin(reslimit.Limits{})
	require.ErrorIs(t, err, reslimit.ErrLimitExceeded)

	gamma := ledger.Account("gamma")
	run(t, gamma, 2, 0, 0)
	_, err = gamma.Begin(reslimit.Limits{})
	require.ErrorIs(t, err, reslimit.ErrLimitExceeded)
	return ledger, live
}

// tenantPoints are the series Register reports for one tenant that has no
// limit and used nothing, but for the figures in set.
func tenantPoints(ledger *reslimit.Ledger, tenant string, set map[string]float64) map[string]float64 {
	out := map[string]float64{}
	st := ledger.Account(tenant).Stats()
	out["reslimit.tenant.period{tenant="+tenant+"}"] = float64(st.Period)
	out["reslimit.tenant.period_start{tenant="+tenant+"}"] = float64(st.PeriodStart.Unix())
	out["reslimit.tenant.period_end{tenant="+tenant+"}"] = 0 // no schedule
	for _, r := range []string{"memory", "total_memory", "cpu_time", "operations", "function_calls", "evaluations", "concurrent_operations"} {
		out["reslimit.tenant.usage."+r+"{resource="+r+",tenant="+tenant+"}"] = 0
	}
	for _, r := range []string{"memory", "total_memory", "cpu_time", "operations", "function_calls", "evaluations", "concurrent_operations", "evaluation_rate", "operation_rate"} {
		out["reslimit.tenant.refusals{resource="+r+",tenant="+tenant+"}"] = 0
	}
	for _, r := range []string{"memory", "cpu_time", "file_size", "operations", "function_calls", "concurrent_operations", "timeout", "processes"} {
		out["reslimit.tenant.run_stops{resource="+r+",tenant="+tenant+"}"] = 0
	}
	out["reslimit.tenant.evaluations{tenant="+tenant+"}"] = 0
	out["reslimit.tenant.running{tenant="+tenant+"}"] = 0
	out["reslimit.tenant.exhausted{tenant="+tenant+"}"] = 0
	for k, v := range set {
		out[k] = v
	}
	return out
}

// Every series of a collection, with its exact value and attributes.
func TestCollectExact(t *testing.T) {
	ledger, _ := threeTenants(t)
	h := register(t, ledger)
	want := map[string]float64{
		"reslimit.tenant.count":    3,
		"reslimit.tenant.overflow": 0,
	}
	for k, v := range tenantPoints(ledger, "acme", map[string]float64{
		"reslimit.tenant.usage.memory{resource=memory,tenant=acme}":                               256,
		"reslimit.tenant.usage.total_memory{resource=total_memory,tenant=acme}":                   1024 + 256,
		"reslimit.tenant.usage.cpu_time{resource=cpu_time,tenant=acme}":                           0.5,
		"reslimit.tenant.usage.operations{resource=operations,tenant=acme}":                       5,
		"reslimit.tenant.usage.evaluations{resource=evaluations,tenant=acme}":                     2,
		"reslimit.tenant.usage.concurrent_operations{resource=concurrent_operations,tenant=acme}": 1,
		"reslimit.tenant.limit.evaluations{resource=evaluations,tenant=acme}":                     10,
		"reslimit.tenant.remaining.evaluations{resource=evaluations,tenant=acme}":                 8,
		"reslimit.tenant.limit.cpu_time{resource=cpu_time,tenant=acme}":                           2,
		"reslimit.tenant.remaining.cpu_time{resource=cpu_time,tenant=acme}":                       1.5,
		"reslimit.tenant.evaluations{tenant=acme}":                                                2,
		"reslimit.tenant.running{tenant=acme}":                                                    1,
	}) {
		want[k] = v
	}
	for k, v := range tenantPoints(ledger, "beta", map[string]float64{
		"reslimit.tenant.usage.operations{resource=operations,tenant=beta}":       1,
		"reslimit.tenant.usage.evaluations{resource=evaluations,tenant=beta}":     1,
		"reslimit.tenant.limit.evaluations{resource=evaluations,tenant=beta}":     1,
		"reslimit.tenant.remaining.evaluations{resource=evaluations,tenant=beta}": 0,
		"reslimit.tenant.refusals{resource=evaluations,tenant=beta}":              1,
		"reslimit.tenant.evaluations{tenant=beta}":                                1,
		"reslimit.tenant.exhausted{tenant=beta}":                                  1,
	}) {
		want[k] = v
	}
	for k, v := range tenantPoints(ledger, "gamma", map[string]float64{
		"reslimit.tenant.usage.operations{resource=operations,tenant=gamma}":   2,
		"reslimit.tenant.usage.evaluations{resource=evaluations,tenant=gamma}": 1,
		"reslimit.tenant.refusals{resource=evaluation_rate,tenant=gamma}":      1,
		"reslimit.tenant.evaluations{tenant=gamma}":                            1,
	}) {
		want[k] = v
	}
	got := h.points(t)
	assert.Equal(t, want, got, "got:\n%s", keys(got))
}

// Each instrument has its unit, a description, and its kind: gauges are
// gauges, counters cumulative monotonic sums; cpu_time is float64
// seconds, the rest int64.
func TestInstruments(t *testing.T) {
	ledger, _ := threeTenants(t)
	h := register(t, ledger)
	ms := h.collect(t)
	type want struct {
		unit string
		agg  string
	}
	for name, w := range map[string]want{
		"reslimit.tenant.usage.memory":                {"By", "gauge int64"},
		"reslimit.tenant.usage.total_memory":          {"By", "gauge int64"},
		"reslimit.tenant.usage.cpu_time":              {"s", "gauge float64"},
		"reslimit.tenant.limit.cpu_time":              {"s", "gauge float64"},
		"reslimit.tenant.remaining.cpu_time":          {"s", "gauge float64"},
		"reslimit.tenant.usage.operations":            {"{operation}", "gauge int64"},
		"reslimit.tenant.usage.function_calls":        {"{call}", "gauge int64"},
		"reslimit.tenant.usage.evaluations":           {"{evaluation}", "gauge int64"},
		"reslimit.tenant.limit.evaluations":           {"{evaluation}", "gauge int64"},
		"reslimit.tenant.remaining.evaluations":       {"{evaluation}", "gauge int64"},
		"reslimit.tenant.usage.concurrent_operations": {"{run}", "gauge int64"},
		"reslimit.tenant.refusals":                    {"{request}", "counter int64"},
		"reslimit.tenant.run_stops":                   {"{run}", "counter int64"},
		"reslimit.tenant.period":                      {"{period}", "gauge int64"},
		"reslimit.tenant.period_start":                {"s", "gauge int64"},
		"reslimit.tenant.period_end":                  {"s", "gauge int64"},
		"reslimit.tenant.evaluations":                 {"{evaluation}", "counter int64"},
		"reslimit.tenant.running":                     {"{run}", "gauge int64"},
		"reslimit.tenant.exhausted":                   {"", "gauge int64"},
		"reslimit.tenant.count":                       {"{tenant}", "gauge int64"},
		"reslimit.tenant.overflow":                    {"{tenant}", "gauge int64"},
	} {
		m, ok := ms[name]
		if !assert.True(t, ok, "%s not collected", name) {
			continue
		}
		assert.Equal(t, w.unit, m.Unit, name)
		assert.NotEmpty(t, m.Description, name)
		assert.Equal(t, w.agg, aggregation(m), name)
	}
	assert.Len(t, ms, 21, "every instrument with a data point, and no other")
}

func aggregation(m metricdata.Metrics) string {
	switch d := m.Data.(type) {
	case metricdata.Gauge[int64]:
		return "gauge int64"
	case metricdata.Gauge[float64]:
		return "gauge float64"
	case metricdata.Sum[int64]:
		if d.IsMonotonic && d.Temporality == metricdata.CumulativeTemporality {
			return "counter int64"
		}
	case metricdata.Sum[float64]:
		if d.IsMonotonic && d.Temporality == metricdata.CumulativeTemporality {
			return "counter float64"
		}
	}
	return "other"
}

// Each collection reads the ledger anew: a run ending, a run refused, a
// Reset of the account are in the next collection.
func TestCollectFollowsTheLedger(t *testing.T) {
	ledger, live := threeTenants(t)
	h := register(t, ledger)
	h.points(t)

	require.NoError(t, live.TrackOperations(3))
	live.End()
	beta := ledger.Account("beta")
	_, err := beta.Begin(reslimit.Limits{})
	require.Error(t, err)
	got := h.points(t)
	assert.Equal(t, map[string]float64{
		"reslimit.tenant.usage.memory{resource=memory,tenant=acme}":                               0,
		"reslimit.tenant.usage.operations{resource=operations,tenant=acme}":                       8,
		"reslimit.tenant.usage.concurrent_operations{resource=concurrent_operations,tenant=acme}": 0,
		"reslimit.tenant.running{tenant=acme}":                                                    0,
	}, pick(got,
		"reslimit.tenant.usage.memory{resource=memory,tenant=acme}",
		"reslimit.tenant.usage.operations{resource=operations,tenant=acme}",
		"reslimit.tenant.usage.concurrent_operations{resource=concurrent_operations,tenant=acme}",
		"reslimit.tenant.running{tenant=acme}"))
	assert.Equal(t, 2.0, got["reslimit.tenant.refusals{resource=evaluations,tenant=beta}"])

	// Reset: usage and evaluations back to 0, refusals kept, not exhausted.
	beta.Reset()
	got = h.points(t)
	assert.Equal(t, map[string]float64{
		"reslimit.tenant.usage.evaluations{resource=evaluations,tenant=beta}":     0,
		"reslimit.tenant.remaining.evaluations{resource=evaluations,tenant=beta}": 1,
		"reslimit.tenant.evaluations{tenant=beta}":                                0,
		"reslimit.tenant.exhausted{tenant=beta}":                                  0,
		"reslimit.tenant.refusals{resource=evaluations,tenant=beta}":              2,
	}, pick(got,
		"reslimit.tenant.usage.evaluations{resource=evaluations,tenant=beta}",
		"reslimit.tenant.remaining.evaluations{resource=evaluations,tenant=beta}",
		"reslimit.tenant.evaluations{tenant=beta}",
		"reslimit.tenant.exhausted{tenant=beta}",
		"reslimit.tenant.refusals{resource=evaluations,tenant=beta}"))
}

// pick returns the points of p under keys (missing ones are absent).
func pick(p map[string]float64, keys ...string) map[string]float64 {
	out := map[string]float64{}
	for _, k := range keys {
		if v, ok := p[k]; ok {
			out[k] = v
		}
	}
	return out
}

// After Unregister the instruments report nothing.
func TestUnregister(t *testing.T) {
	ledger, _ := threeTenants(t)
	h := register(t, ledger)
	require.NotEmpty(t, h.points(t))
	require.NoError(t, h.reg.Unregister())
	assert.Empty(t, h.points(t))
}

// An empty ledger reports its count, 0, and no tenant.
func TestEmptyLedger(t *testing.T) {
	h := register(t, mustLedger(t, reslimit.AccountLimits{}))
	assert.Equal(t, map[string]float64{"reslimit.tenant.count": 0, "reslimit.tenant.overflow": 0}, h.points(t))
}

// A run stopped by its own limit is a run stop of its tenant, by resource;
// a close of the period does not clear it, and moves the period on.
func TestRunStops(t *testing.T) {
	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{})
	require.NoError(t, err)
	h := register(t, ledger)
	tr, err := ledger.Account("acme").Begin(reslimit.Limits{MaxOperations: 1})
	require.NoError(t, err)
	stop := tr.TrackOperations(2)
	require.ErrorIs(t, stop, reslimit.ErrLimitExceeded)
	tr.EndWithError(stop) // the run ends with its own limit's error: a stop
	ledger.ClosePeriod()
	p := h.points(t)
	assert.Equal(t, 1.0, p["reslimit.tenant.run_stops{resource=operations,tenant=acme}"])
	assert.Equal(t, 0.0, p["reslimit.tenant.run_stops{resource=timeout,tenant=acme}"])
	assert.Equal(t, 2.0, p["reslimit.tenant.period{tenant=acme}"], "the close moved the period on")
	assert.Equal(t, 0.0, p["reslimit.tenant.period_end{tenant=acme}"], "no schedule")
}
