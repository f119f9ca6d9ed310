package reslimitotel_test

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	reslimitotel "github.com/reslimit/reslimit/contrib/otel"
)

// manyTenants is a ledger of n tenants t00000, t00001, ..., each of which
// ran once for 2 operations (of 1000) and was refused once for asking 999
// more than it had left.
func manyTenants(t *testing.T, n int) *reslimit.Ledger {
	t.Helper()
	ledger := mustLedger(t, reslimit.AccountLimits{MaxTotalOperations: 1000})
	for i := range n {
		a := ledger.Account(fmt.Sprintf("t%05d", i))
		tr, err := a.Begin(reslimit.Limits{})
		require.NoError(t, err)
		require.NoError(t, tr.TrackOperations(2))
		require.ErrorIs(t, tr.TrackOperations(999), reslimit.ErrLimitExceeded)
		tr.End()
	}
	return ledger
}

// reported returns the tenants with a reslimit.tenant.running series in p,
// sorted.
func reported(p map[string]float64) []string {
	var out []string
	for k := range p {
		if t, ok := strings.CutPrefix(k, "reslimit.tenant.running{tenant="); ok {
			out = append(out, strings.TrimSuffix(t, "}"))
		}
	}
	sort.Strings(out)
	return out
}

// Over the cap the tenants are summed into _other: usage, refusals,
// evaluations and running, not limits.
func TestCapSumsIntoOther(t *testing.T) {
	const n = 1000
	h := register(t, manyTenants(t, n), reslimitotel.WithMaxTenants(100))
	got := h.points(t)
	assert.Len(t, reported(got), 101, "100 tenants and _other")
	assert.Equal(t, map[string]float64{
		"reslimit.tenant.count":                                                   n,
		"reslimit.tenant.overflow":                                                n - 100,
		"reslimit.tenant.evaluations{tenant=_other}":                              n - 100,
		"reslimit.tenant.usage.operations{resource=operations,tenant=_other}":     2 * (n - 100),
		"reslimit.tenant.refusals{resource=operations,tenant=_other}":             n - 100,
		"reslimit.tenant.usage.operations{resource=operations,tenant=t00000}":     2,
		"reslimit.tenant.limit.operations{resource=operations,tenant=t00000}":     1000,
		"reslimit.tenant.remaining.operations{resource=operations,tenant=t00000}": 998,
		"reslimit.tenant.refusals{resource=operations,tenant=t00000}":             1,
	}, pick(got,
		"reslimit.tenant.count", "reslimit.tenant.overflow",
		"reslimit.tenant.evaluations{tenant=_other}",
		"reslimit.tenant.usage.operations{resource=operations,tenant=_other}",
		"reslimit.tenant.refusals{resource=operations,tenant=_other}",
		"reslimit.tenant.limit.operations{resource=operations,tenant=_other}",
		"reslimit.tenant.exhausted{tenant=_other}",
		"reslimit.tenant.usage.operations{resource=operations,tenant=t00000}",
		"reslimit.tenant.limit.operations{resource=operations,tenant=t00000}",
		"reslimit.tenant.remaining.operations{resource=operations,tenant=t00000}",
		"reslimit.tenant.refusals{resource=operations,tenant=t00000}",
		"reslimit.tenant.usage.operations{resource=operations,tenant=t00100}",
	), "no limit or exhausted for _other; t00100 is over the cap")
}

// The tenants reported on their own stay so while they exist: new tenants
// that sort first do not push them out; a removed one frees its place.
func TestCapKeepsKnownTenants(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	ledger.Account("m")
	ledger.Account("n")
	h := register(t, ledger, reslimitotel.WithMaxTenants(2))
	assert.Equal(t, []string{"m", "n"}, reported(h.points(t)))
	ledger.Account("a")
	ledger.Account("b")
	assert.Equal(t, []string{"_other", "m", "n"}, reported(h.points(t)))
	ledger.Remove("m")
	assert.Equal(t, []string{"_other", "a", "n"}, reported(h.points(t)))
}

// WithTenantFilter reports only the allowed tenants; WithOtherTenant("")
// drops the others (still counted); a real tenant named like the other
// tenant is overflow; with no cap every other tenant is reported.
func TestFilterAndDrop(t *testing.T) {
	ledger := manyTenants(t, 5)
	ledger.Account(reslimitotel.DefaultOtherTenant)
	endsIn2 := func(t string) bool { return strings.HasSuffix(t, "2") }

	got := register(t, ledger, reslimitotel.WithTenantFilter(endsIn2)).points(t)
	assert.Equal(t, []string{"_other", "t00002"}, reported(got))
	assert.Equal(t, 5.0, got["reslimit.tenant.overflow"])
	assert.Equal(t, 4.0, got["reslimit.tenant.evaluations{tenant=_other}"], "4 runs; the real _other ran none")

	got = register(t, ledger, reslimitotel.WithTenantFilter(endsIn2), reslimitotel.WithOtherTenant("")).points(t)
	assert.Equal(t, []string{"t00002"}, reported(got))
	assert.Equal(t, 5.0, got["reslimit.tenant.overflow"])

	got = register(t, ledger, reslimitotel.WithMaxTenants(0), reslimitotel.WithOtherTenant("rest")).points(t)
	assert.Equal(t, []string{"_other", "t00000", "t00001", "t00002", "t00003", "t00004"}, reported(got))
	assert.Equal(t, 0.0, got["reslimit.tenant.overflow"])
}

// Attribute values are valid UTF-8 whatever the tenant names: invalid
// bytes become U+FFFD, and a name that would then collide with another
// tenant's is summed into the other tenant.
func TestTenantNamesThatAreNotUTF8(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	for _, name := range []string{"a\xff", "a\xfe", "a\uFFFD", "b\xff"} {
		run(t, ledger.Account(name), 1, 0, 0)
	}
	got := register(t, ledger).points(t)
	// "a\uFFFD" is valid and keeps its name; "a\xfe" and "a\xff" would
	// take it: both are summed into _other. "b\xff" becomes "b\uFFFD".
	assert.Equal(t, []string{"_other", "a\uFFFD", "b\uFFFD"}, reported(got))
	assert.Equal(t, 2.0, got["reslimit.tenant.evaluations{tenant=_other}"])
	assert.Equal(t, 2.0, got["reslimit.tenant.overflow"])
	assert.Equal(t, 1.0, got["reslimit.tenant.evaluations{tenant=b\uFFFD}"])
}

// With WithMonitor, the monitor's counters, exactly as its Stats says.
func TestMonitorCounters(t *testing.T) {
	ledger, _ := threeTenants(t)
	mon, err := reslimit.NewMonitor(reslimit.MonitorConfig{EventBuffer: 1})
	require.NoError(t, err)
	defer mon.Stop()
	require.NoError(t, mon.RegisterLedger("tenant/", ledger))
	mon.Poll() // beta is at its evaluations limit
	beta := ledger.Account("beta")
	for range 3 {
		_, err := beta.Begin(reslimit.Limits{})
		require.Error(t, err)
		mon.Poll()
	}
	st := mon.Stats()
	require.Positive(t, st.LimitsExceeded)
	require.Positive(t, st.DroppedEvents)

	got := register(t, ledger, reslimitotel.WithMonitor(mon)).points(t)
	assert.Equal(t, map[string]float64{
		"reslimit.monitor.components":      float64(st.Components),
		"reslimit.monitor.warnings":        float64(st.Warnings),
		"reslimit.monitor.limits_exceeded": float64(st.LimitsExceeded),
		"reslimit.monitor.recoveries":      float64(st.Recoveries),
		"reslimit.monitor.dropped_events":  float64(st.DroppedEvents),
		"reslimit.monitor.polls":           4,
	}, only(got, "reslimit.monitor."))
	assert.Empty(t, only(register(t, ledger).points(t), "reslimit.monitor."), "no monitor, no monitor metrics")
}
