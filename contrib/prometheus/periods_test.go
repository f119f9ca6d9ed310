package reslimitprom_test

import (
	"context"
	"strings"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	reslimitprom "github.com/reslimit/reslimit/contrib/prometheus"
)

// stopRun runs one run of a that its own MaxOperations stops after ops
// operations.
func stopRun(t *testing.T, a *reslimit.Account, ops int64) {
	t.Helper()
	tr, err := a.Begin(reslimit.Limits{MaxOperations: ops})
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(ops))
	tr.EndWithError(tr.TrackOperation())
}

// Runs stopped by their own limits are reslimit_run_stops_total, by
// resource, with a series for the per-run limits from the start; a period
// close restarts the usage and evaluations but not the run stops, and
// moves reslimit_tenant_period on.
func TestRunStopsAndPeriods(t *testing.T) {
	end := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	ledger := mustLedger(t, reslimit.AccountLimits{},
		reslimit.WithPeriodSchedule(func(time.Time) time.Time { return end }))
	t.Cleanup(func() { require.NoError(t, ledger.Close(context.Background())) })
	evil := ledger.Account("evil")
	stopRun(t, evil, 5)
	stopRun(t, evil, 5)
	_, err := reslimit.Run(context.Background(), reslimit.Limits{Timeout: time.Millisecond}, func(ctx context.Context) error {
		<-ctx.Done()
		return nil
	}, reslimit.WithAccount(evil))
	require.Error(t, err)
	ledger.Account("good")
	c := mustCollector(t, ledger)

	expected := `
# HELP reslimit_run_stops_total Runs of the tenant stopped by their own per-run limits (not the tenant's), by the resource that stopped them; never restarts at a period close.
# TYPE reslimit_run_stops_total counter
reslimit_run_stops_total{resource="concurrent_operations",tenant="evil"} 0
reslimit_run_stops_total{resource="cpu_time",tenant="evil"} 0
reslimit_run_stops_total{resource="file_size",tenant="evil"} 0
reslimit_run_stops_total{resource="memory",tenant="evil"} 0
reslimit_run_stops_total{resource="operations",tenant="evil"} 2
reslimit_run_stops_total{resource="processes",tenant="evil"} 0
reslimit_run_stops_total{resource="timeout",tenant="evil"} 1
reslimit_run_stops_total{resource="concurrent_operations",tenant="good"} 0
reslimit_run_stops_total{resource="cpu_time",tenant="good"} 0
reslimit_run_stops_total{resource="file_size",tenant="good"} 0
reslimit_run_stops_total{resource="memory",tenant="good"} 0
reslimit_run_stops_total{resource="operations",tenant="good"} 0
reslimit_run_stops_total{resource="processes",tenant="good"} 0
reslimit_run_stops_total{resource="timeout",tenant="good"} 0
# HELP reslimit_tenant_period The number of the tenant's open billing period (1 for the first); it moves on at each close.
# TYPE reslimit_tenant_period gauge
reslimit_tenant_period{tenant="evil"} 1
reslimit_tenant_period{tenant="good"} 1
# HELP reslimit_tenant_period_end_seconds When the tenant's open billing period is scheduled to close, in Unix seconds (only when the ledger closes periods on a schedule).
# TYPE reslimit_tenant_period_end_seconds gauge
reslimit_tenant_period_end_seconds{tenant="evil"} 1.893456e+09
reslimit_tenant_period_end_seconds{tenant="good"} 1.893456e+09
`
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(expected),
		"reslimit_run_stops_total", "reslimit_tenant_period", "reslimit_tenant_period_end_seconds"))
	start := evil.Stats().PeriodStart
	assert.Equal(t, float64(start.UnixNano())/1e9, value(t, c, "reslimit_tenant_period_start_seconds", "evil"))
	assert.Equal(t, 3.0, value(t, c, "reslimit_tenant_evaluations_total", "evil"))
	assert.Equal(t, 10.0, value(t, c, "reslimit_tenant_usage", "evil", "operations"))

	lines := ledger.ClosePeriod()
	require.Len(t, lines, 2)
	assert.Equal(t, 2.0, value(t, c, "reslimit_tenant_period", "evil"))
	assert.Equal(t, float64(lines[0].End.UnixNano())/1e9, value(t, c, "reslimit_tenant_period_start_seconds", "evil"))
	assert.Equal(t, 0.0, value(t, c, "reslimit_tenant_evaluations_total", "evil"), "restarts at the close")
	assert.Equal(t, 0.0, value(t, c, "reslimit_tenant_usage", "evil", "operations"), "restarts at the close")
	assert.Equal(t, 2.0, value(t, c, "reslimit_run_stops_total", "evil", "operations"), "does not restart")
	stopRun(t, evil, 1)
	assert.Equal(t, 3.0, value(t, c, "reslimit_run_stops_total", "evil", "operations"))
	assert.Equal(t, 1.893456e+09, value(t, c, "reslimit_tenant_period_end_seconds", "evil"))
}

// Without a schedule there is no period end; over the cap the run stops
// are summed into the other tenant, with a series for another resource
// once it stopped a run.
func TestRunStopsOverTheCapNoPeriodEnd(t *testing.T) {
	plain := mustLedger(t, reslimit.AccountLimits{})
	stopRun(t, plain.Account("a"), 1)
	stopRun(t, plain.Account("b"), 1)
	tr, err := plain.Account("b").Begin(reslimit.Limits{})
	require.NoError(t, err)
	tr.EndWithError(&reslimit.LimitError{Resource: reslimit.Calls, Limit: 10, Used: 10, Requested: 1}) // a guest's own call limit, say
	c := mustCollector(t, plain, reslimitprom.WithMaxTenants(1))
	assert.Equal(t, 0, testutil.CollectAndCount(c, "reslimit_tenant_period_end_seconds"))
	assert.Equal(t, 1.0, value(t, c, "reslimit_run_stops_total", "a", "operations"))
	assert.Equal(t, 1.0, value(t, c, "reslimit_run_stops_total", "_other", "operations"))
	assert.Equal(t, 1.0, value(t, c, "reslimit_run_stops_total", "_other", "function_calls"))
	assert.Equal(t, 7, testutil.CollectAndCount(filtered{c: c, name: "reslimit_run_stops_total", labels: []string{"a"}}))
}

// A tenant's rates have refusal series once they refused, also summed
// into the other tenant over the cap.
func TestRateRefusals(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{EvaluationsPerSecond: 1e-9, EvaluationBurst: 1})
	for _, name := range []string{"a", "b"} {
		acct := ledger.Account(name)
		tr, err := acct.Begin(reslimit.Limits{})
		require.NoError(t, err)
		tr.End()
		for range 2 {
			_, err = acct.Begin(reslimit.Limits{})
			require.ErrorIs(t, err, reslimit.ErrLimitExceeded)
		}
	}
	reg := prom.NewPedanticRegistry()
	reg.MustRegister(mustCollector(t, ledger, reslimitprom.WithMaxTenants(1)))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "reslimit_tenant_refusals_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["resource"] == reslimit.EvaluationRate.String() {
				got[labels["tenant"]] = m.GetCounter().GetValue()
			}
		}
	}
	assert.Equal(t, map[string]float64{"a": 2, "_other": 2}, got)
}
