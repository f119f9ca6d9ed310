package reslimitprom_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	reslimitprom "github.com/reslimit/reslimit/contrib/prometheus"
)

func run(t testing.TB, a *reslimit.Account, ops, mem int64, cpu time.Duration) {
	t.Helper()
	tr, err := a.Begin(reslimit.Limits{})
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(ops))
	if mem > 0 {
		require.NoError(t, tr.TrackMemory(mem))
	}
	require.NoError(t, tr.AddCPUTime(cpu))
	tr.End()
}

// twoTenants: acme used some of its limits; beta is out of evaluations and
// was refused once.
func twoTenants(t *testing.T) *reslimit.Ledger {
	ledger := mustLedger(t, reslimit.AccountLimits{MaxEvaluations: 10, MaxCPUTime: 2 * time.Second})
	run(t, ledger.Account("acme"), 5, 1024, 500*time.Millisecond)
	beta := ledger.Account("beta")
	require.NoError(t, beta.SetLimit(reslimit.Evaluations, 1))
	require.NoError(t, beta.SetLimit(reslimit.CPUTime, 0))
	run(t, beta, 1, 0, 0)
	_, err := beta.Begin(reslimit.Limits{})
	require.Error(t, err)
	return ledger
}

func TestCollectAndCompare(t *testing.T) {
	c := mustCollector(t, twoTenants(t))
	expected := `
# HELP reslimit_tenant_usage What the tenant used, by resource, in base units (bytes, seconds for cpu_time, counts); memory and concurrent_operations are held now, the rest cumulative in the open billing period: they restart at 0 at each close.
# TYPE reslimit_tenant_usage gauge
reslimit_tenant_usage{resource="concurrent_operations",tenant="acme"} 0
reslimit_tenant_usage{resource="cpu_time",tenant="acme"} 0.5
reslimit_tenant_usage{resource="evaluations",tenant="acme"} 1
reslimit_tenant_usage{resource="function_calls",tenant="acme"} 0
reslimit_tenant_usage{resource="memory",tenant="acme"} 0
reslimit_tenant_usage{resource="operations",tenant="acme"} 5
reslimit_tenant_usage{resource="total_memory",tenant="acme"} 1024
reslimit_tenant_usage{resource="concurrent_operations",tenant="beta"} 0
reslimit_tenant_usage{resource="cpu_time",tenant="beta"} 0
reslimit_tenant_usage{resource="evaluations",tenant="beta"} 1
reslimit_tenant_usage{resource="function_calls",tenant="beta"} 0
reslimit_tenant_usage{resource="memory",tenant="beta"} 0
reslimit_tenant_usage{resource="operations",tenant="beta"} 1
reslimit_tenant_usage{resource="total_memory",tenant="beta"} 0
# HELP reslimit_tenant_limit The tenant's account limit, by limited resource, in base units (bytes, seconds for cpu_time, counts).
# TYPE reslimit_tenant_limit gauge
reslimit_tenant_limit{resource="cpu_time",tenant="acme"} 2
reslimit_tenant_limit{resource="evaluations",tenant="acme"} 10
reslimit_tenant_limit{resource="evaluations",tenant="beta"} 1
# HELP reslimit_tenant_remaining What the tenant may still use before its limit, by limited resource, in base units (bytes, seconds for cpu_time, counts).
# TYPE reslimit_tenant_remaining gauge
reslimit_tenant_remaining{resource="cpu_time",tenant="acme"} 1.5
reslimit_tenant_remaining{resource="evaluations",tenant="acme"} 9
reslimit_tenant_remaining{resource="evaluations",tenant="beta"} 0
# HELP reslimit_tenant_evaluations_total Runs started on the tenant's account in the open billing period; restarts at 0 at each close.
# TYPE reslimit_tenant_evaluations_total counter
reslimit_tenant_evaluations_total{tenant="acme"} 1
reslimit_tenant_evaluations_total{tenant="beta"} 1
# HELP reslimit_tenant_running Runs of the tenant in progress now.
# TYPE reslimit_tenant_running gauge
reslimit_tenant_running{tenant="acme"} 0
reslimit_tenant_running{tenant="beta"} 0
# HELP reslimit_tenant_exhausted 1 when some cumulative limit of the tenant has no room left, else 0.
# TYPE reslimit_tenant_exhausted gauge
reslimit_tenant_exhausted{tenant="acme"} 0
reslimit_tenant_exhausted{tenant="beta"} 1
# HELP reslimit_tenants Tenant accounts in the ledger.
# TYPE reslimit_tenants gauge
reslimit_tenants 2
# HELP reslimit_tenants_overflow Tenant accounts not exported with series of their own in this scrape (over the cap or not allowed).
# TYPE reslimit_tenants_overflow gauge
reslimit_tenants_overflow 0
`
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(expected),
		"reslimit_tenant_usage", "reslimit_tenant_limit", "reslimit_tenant_remaining",
		"reslimit_tenant_evaluations_total", "reslimit_tenant_running", "reslimit_tenant_exhausted",
		"reslimit_tenants", "reslimit_tenants_overflow"))

	assert.Equal(t, 1.0, value(t, c, "reslimit_tenant_refusals_total", "beta", "evaluations"))
	assert.Equal(t, 0.0, value(t, c, "reslimit_tenant_refusals_total", "acme", "evaluations"))
	// 7 resources x 2 tenants.
	assert.Equal(t, 14, testutil.CollectAndCount(c, "reslimit_tenant_refusals_total"))
	assert.Equal(t, 0, testutil.CollectAndCount(c, "reslimit_monitor_warnings_total"), "no monitor")
}

// filtered is a collector of the one metric of c with this name and label
// values, so that testutil.ToFloat64 can read it.
type filtered struct {
	c      prom.Collector
	name   string
	labels []string
}

func (f filtered) Describe(ch chan<- *prom.Desc) { f.c.Describe(ch) }

func (f filtered) Collect(ch chan<- prom.Metric) {
	all := make(chan prom.Metric)
	go func() {
		f.c.Collect(all)
		close(all)
	}()
	for m := range all {
		if !strings.Contains(m.Desc().String(), `fqName: "`+f.name+`"`) {
			continue
		}
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			panic(err)
		}
		vals := map[string]string{}
		for _, l := range pb.GetLabel() {
			vals[l.GetName()] = l.GetValue()
		}
		keys := []string{"tenant", "resource"}
		ok := true
		for i, v := range f.labels {
			ok = ok && vals[keys[i]] == v
		}
		if ok {
			ch <- m
		}
	}
}

func value(t *testing.T, c prom.Collector, name string, labels ...string) float64 {
	t.Helper()
	f := filtered{c: c, name: name, labels: labels}
	require.Equal(t, 1, testutil.CollectAndCount(f), "%s%v", name, labels)
	return testutil.ToFloat64(f)
}

func TestLint(t *testing.T) {
	ledger := twoTenants(t)
	mon, err := reslimit.NewMonitor(reslimit.MonitorConfig{})
	require.NoError(t, err)
	defer mon.Stop()
	problems, err := testutil.CollectAndLint(mustCollector(t, ledger, reslimitprom.WithMonitor(mon)))
	require.NoError(t, err)
	assert.Empty(t, problems)
}

func TestPedanticRegistry(t *testing.T) {
	// The pedantic registry checks that Collect matches Describe.
	ledger := twoTenants(t)
	mon, err := reslimit.NewMonitor(reslimit.MonitorConfig{})
	require.NoError(t, err)
	defer mon.Stop()
	reg := prom.NewPedanticRegistry()
	require.NoError(t, reg.Register(mustCollector(t, ledger, reslimitprom.WithMonitor(mon), reslimitprom.WithMaxTenants(1))))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	assert.NotEmpty(t, mfs)
}

func TestMonitorCounters(t *testing.T) {
	ledger := twoTenants(t)
	mon, err := reslimit.NewMonitor(reslimit.MonitorConfig{EventBuffer: 1})
	require.NoError(t, err)
	defer mon.Stop()
	for _, name := range ledger.Tenants() {
		a, _ := ledger.Lookup(name)
		require.NoError(t, mon.Register(name, a))
	}
	mon.Poll() // beta is at its evaluations limit
	beta, _ := ledger.Lookup("beta")
	for range 3 {
		_, err := beta.Begin(reslimit.Limits{})
		require.Error(t, err)
		mon.Poll()
	}
	st := mon.Stats()
	require.Positive(t, st.LimitsExceeded)
	require.Positive(t, st.DroppedEvents)

	c := mustCollector(t, ledger, reslimitprom.WithMonitor(mon))
	expected := fmt.Sprintf(`
# HELP reslimit_monitor_components Components registered with the monitor.
# TYPE reslimit_monitor_components gauge
reslimit_monitor_components 2
# HELP reslimit_monitor_warnings_total High-usage events the monitor produced.
# TYPE reslimit_monitor_warnings_total counter
reslimit_monitor_warnings_total %d
# HELP reslimit_monitor_limits_exceeded_total Limit-exceeded events the monitor produced.
# TYPE reslimit_monitor_limits_exceeded_total counter
reslimit_monitor_limits_exceeded_total %d
# HELP reslimit_monitor_dropped_events_total Monitor events dropped because the events channel was full.
# TYPE reslimit_monitor_dropped_events_total counter
reslimit_monitor_dropped_events_total %d
# HELP reslimit_monitor_polls_total Polls the monitor completed.
# TYPE reslimit_monitor_polls_total counter
reslimit_monitor_polls_total 4
`, st.Warnings, st.LimitsExceeded, st.DroppedEvents)
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(expected),
		"reslimit_monitor_components", "reslimit_monitor_warnings_total", "reslimit_monitor_limits_exceeded_total",
		"reslimit_monitor_dropped_events_total", "reslimit_monitor_polls_total"))
	assert.Equal(t, 1, testutil.CollectAndCount(c, "reslimit_monitor_recoveries_total"))
}

func manyTenants(t testing.TB, n int) *reslimit.Ledger {
	ledger := mustLedger(t, reslimit.AccountLimits{MaxTotalOperations: 1000})
	for i := range n {
		run(t, ledger.Account(fmt.Sprintf("t%05d", i)), 2, 0, 0)
	}
	return ledger
}

// gather collects c once and returns every sample by
// name{tenant,resource} (label values, empty when absent).
func gather(t *testing.T, c prom.Collector) map[string]float64 {
	t.Helper()
	reg := prom.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var tenant, resource string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "tenant":
					tenant = l.GetValue()
				case "resource":
					resource = l.GetValue()
				}
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			out[mf.GetName()+"{"+tenant+","+resource+"}"] = v
		}
	}
	return out
}

func TestCapAggregatesIntoOther(t *testing.T) {
	const n = 10_000
	ledger := manyTenants(t, n)
	c := mustCollector(t, ledger, reslimitprom.WithMaxTenants(100))

	start := time.Now()
	got := gather(t, c)
	t.Logf("collected %d tenants in %v", n, time.Since(start))
	tenants := 0
	for k := range got {
		if strings.HasPrefix(k, "reslimit_tenant_evaluations_total{") {
			tenants++
		}
	}
	assert.Equal(t, 101, tenants, "100 tenants and _other")
	assert.Equal(t, float64(n), got["reslimit_tenants{,}"])
	assert.Equal(t, float64(n-100), got["reslimit_tenants_overflow{,}"])
	assert.Equal(t, float64(n-100), got["reslimit_tenant_evaluations_total{_other,}"])
	assert.Equal(t, float64(2*(n-100)), got["reslimit_tenant_usage{_other,operations}"])
	assert.Equal(t, 2.0, got["reslimit_tenant_usage{t00000,operations}"])
	assert.Equal(t, 1000.0, got["reslimit_tenant_limit{t00000,operations}"])
	assert.Equal(t, 998.0, got["reslimit_tenant_remaining{t00000,operations}"])
	_, ok := got["reslimit_tenant_limit{_other,operations}"]
	assert.False(t, ok, "limits are not summed")
	_, ok = got["reslimit_tenant_usage{t00100,operations}"]
	assert.False(t, ok, "over the cap")
}

func TestCapKeepsKnownTenants(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	for _, n := range []string{"m", "n"} {
		ledger.Account(n)
	}
	c := mustCollector(t, ledger, reslimitprom.WithMaxTenants(2))
	tenants := func() []string {
		var out []string
		for _, n := range []string{"a", "b", "m", "n", "_other"} {
			if testutil.CollectAndCount(filtered{c: c, name: "reslimit_tenant_running", labels: []string{n}}) == 1 {
				out = append(out, n)
			}
		}
		return out
	}
	assert.Equal(t, []string{"m", "n"}, tenants())
	// New tenants that sort first do not push the known ones out.
	ledger.Account("a")
	ledger.Account("b")
	assert.Equal(t, []string{"m", "n", "_other"}, tenants())
	// A removed tenant frees its place.
	ledger.Remove("m")
	assert.Equal(t, []string{"a", "n", "_other"}, tenants())
}

func TestAllowListAndDrop(t *testing.T) {
	ledger := manyTenants(t, 5)
	ledger.Account("_other") // a real tenant with the overflow name

	c := mustCollector(t, ledger, reslimitprom.WithAllowList("t00001", "t00003", "unknown"))
	assert.Equal(t, 3, testutil.CollectAndCount(c, "reslimit_tenant_running"), "2 allowed and _other")
	assert.Equal(t, 1.0, value(t, c, "reslimit_tenant_evaluations_total", "t00001"))
	assert.Equal(t, 4.0, value(t, c, "reslimit_tenants_overflow"))
	assert.Equal(t, 3.0, value(t, c, "reslimit_tenant_evaluations_total", "_other"))

	c = mustCollector(t, ledger,
		reslimitprom.WithTenantFilter(func(t string) bool { return strings.HasSuffix(t, "2") }),
		reslimitprom.WithOtherTenant(""))
	assert.Equal(t, 1, testutil.CollectAndCount(c, "reslimit_tenant_running"), "the others are dropped")
	assert.Equal(t, 5.0, value(t, c, "reslimit_tenants_overflow"))

	// With no cap every tenant is exported, a real "_other" as overflow.
	c = mustCollector(t, ledger, reslimitprom.WithMaxTenants(0))
	assert.Equal(t, 6, testutil.CollectAndCount(c, "reslimit_tenant_running"))
	assert.Equal(t, 1.0, value(t, c, "reslimit_tenants_overflow"))
}

func TestNilLedger(t *testing.T) {
	c := mustCollector(t, nil)
	assert.Equal(t, 0.0, value(t, c, "reslimit_tenants"))
	problems, err := testutil.CollectAndLint(c)
	require.NoError(t, err)
	assert.Empty(t, problems)
}

// TestCollectWhileBusy runs tenants' hot paths while collecting, for the
// race detector, and checks that the hot path is not held up by a scrape.
func TestCollectWhileBusy(t *testing.T) {
	ledger := manyTenants(t, 300)
	c := mustCollector(t, ledger, reslimitprom.WithMaxTenants(100))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ops [2]int64
	for w := range 2 {
		wg.Go(func() {
			a := ledger.Account(fmt.Sprintf("busy%d", w))
			require.NoError(t, a.SetLimit(reslimit.Operations, 0))
			for {
				select {
				case <-stop:
					return
				default:
				}
				tr, err := a.Begin(reslimit.Limits{})
				if err != nil {
					continue
				}
				for range 1000 {
					_ = tr.TrackOperation()
				}
				tr.End()
				ops[w] += 1000
			}
		})
	}
	for range 3 {
		testutil.CollectAndCount(c)
	}
	close(stop)
	wg.Wait()
	assert.Positive(t, ops[0]+ops[1])
}

func BenchmarkCollect10kTenants(b *testing.B) {
	ledger := manyTenants(b, 10_000)
	c := mustCollector(b, ledger)
	reg := prom.NewRegistry()
	reg.MustRegister(c)
	b.ResetTimer()
	for b.Loop() {
		if _, err := reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}

// mustLedger returns reslimit.NewLedger(defaults, opts...), failing tb on
// an error.
func mustLedger(tb testing.TB, defaults reslimit.AccountLimits, opts ...reslimit.LedgerOption) *reslimit.Ledger {
	tb.Helper()
	l, err := reslimit.NewLedger(defaults, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

// mustCollector returns reslimitprom.NewCollector(ledger, opts...),
// failing tb on an error.
func mustCollector(tb testing.TB, ledger *reslimit.Ledger, opts ...reslimitprom.Option) prom.Collector {
	tb.Helper()
	c, err := reslimitprom.NewCollector(ledger, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}
