package e2e

import (
	"net/http"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/reslimit/reslimit"
	reslimitprom "github.com/reslimit/reslimit/contrib/prometheus"
	"github.com/reslimit/reslimit/reslimithttp"
)

// opsView is what an operator of one replica sees: a Monitor watching
// its ledger, its Prometheus collector, and its status page's snapshot.
type opsView struct {
	rep *replica
	mon *reslimit.Monitor
	reg *prom.Registry
}

func newOpsView(t *testing.T, rep *replica) *opsView {
	t.Helper()
	mon, err := reslimit.NewMonitor(reslimit.MonitorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mon.Stop)
	if err := mon.RegisterLedger("tenant/", rep.ledger); err != nil {
		t.Fatal(err)
	}
	mon.Poll()
	c, err := reslimitprom.NewCollector(rep.ledger)
	if err != nil {
		t.Fatal(err)
	}
	reg := prom.NewPedanticRegistry()
	reg.MustRegister(c)
	return &opsView{rep: rep, mon: mon, reg: reg}
}

// metric returns the value of the sample name{tenant, resource} (resource
// "" for a metric without one), and whether there is one.
func (v *opsView) metric(t *testing.T, name, tenant, resource string) (float64, bool) {
	t.Helper()
	mfs, err := v.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["tenant"] == tenant && labels["resource"] == resource {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

// runStopEvents polls the monitor and returns the run_stopped events it
// sent, as counts by component and resource, failing t for two events of
// one resource in one poll.
func (v *opsView) runStopEvents(t *testing.T) map[string]int64 {
	t.Helper()
	v.mon.Poll()
	out := map[string]int64{}
	for {
		select {
		case ev := <-v.mon.Events():
			if ev.Kind != reslimit.RunStopped {
				continue
			}
			k := ev.Component + "/" + ev.Resource.String()
			if _, dup := out[k]; dup {
				t.Errorf("%s: two run_stopped events for %s in one poll", v.rep.id, k)
			}
			out[k] = ev.RunStops
		default:
			return out
		}
	}
}

// checkRunStops checks that every view of the replica counts exactly
// want as evil's run stops, and none of good's: AccountStats, Prometheus
// and the snapshot (cumulative), and the monitor's events (newEvents: the
// stops since its previous poll).
func (v *opsView) checkRunStops(t *testing.T, want, newEvents map[reslimit.Resource]int64) {
	t.Helper()
	id := v.rep.id
	evil, good := v.rep.ledger.Account("evil").Stats(), v.rep.ledger.Account("good").Stats()
	if !equalCounts(evil.RunStops, want) || len(good.RunStops) != 0 {
		t.Errorf("%s: AccountStats.RunStops evil %v good %v, want %v and none", id, evil.RunStops, good.RunStops, want)
	}
	for _, r := range reslimit.Resources() {
		if r == reslimit.EvaluationRate || r == reslimit.OperationRate || r == reslimit.Evaluations || r == reslimit.TotalMemory || r == reslimit.Calls {
			continue // not a per-run limit: no series unless it stopped a run
		}
		got, ok := v.metric(t, "reslimit_run_stops_total", "evil", r.String())
		if !ok || got != float64(want[r]) {
			t.Errorf("%s: reslimit_run_stops_total{evil,%s} = %v (present %v), want %d", id, r, got, ok, want[r])
		}
		if got, _ := v.metric(t, "reslimit_run_stops_total", "good", r.String()); got != 0 {
			t.Errorf("%s: reslimit_run_stops_total{good,%s} = %v, want 0", id, r, got)
		}
	}
	events := v.runStopEvents(t)
	wantEvents := map[string]int64{}
	for r, n := range newEvents {
		wantEvents["tenant/evil/"+r.String()] = n
	}
	if !equalCounts(events, wantEvents) {
		t.Errorf("%s: run_stopped events %v, want %v", id, events, wantEvents)
	}
	snap := reslimithttp.TakeSnapshot(v.rep.ledger, v.mon)
	for _, ts := range snap.Tenants {
		wantSnap := map[string]int64{}
		if ts.Name == "evil" {
			for r, n := range want {
				wantSnap[r.String()] = n
			}
		}
		if !equalCounts(ts.RunStops, wantSnap) {
			t.Errorf("%s: snapshot run_stops of %s %v, want %v", id, ts.Name, ts.RunStops, wantSnap)
		}
	}
}

func equalCounts[K comparable](a, b map[K]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// checkPeriod checks that every view of the replica shows evil's open
// period as number n, closing at end, and, after a close, the previous
// period's line (prevEvals evaluations on this replica).
func (v *opsView) checkPeriod(t *testing.T, n uint64, end time.Time, prevEvals int64) {
	t.Helper()
	id := v.rep.id
	st := v.rep.ledger.Account("evil").Stats()
	if st.Period != n || !st.PeriodEnd.Equal(end) {
		t.Errorf("%s: Stats period %d ending %v, want %d ending %v", id, st.Period, st.PeriodEnd, n, end)
	}
	if got, _ := v.metric(t, "reslimit_tenant_period", "evil", ""); got != float64(n) {
		t.Errorf("%s: reslimit_tenant_period{evil} = %v, want %d", id, got, n)
	}
	if got, _ := v.metric(t, "reslimit_tenant_period_end_seconds", "evil", ""); got != float64(end.Unix()) {
		t.Errorf("%s: reslimit_tenant_period_end_seconds{evil} = %v, want %d", id, got, end.Unix())
	}
	for _, ts := range reslimithttp.TakeSnapshot(v.rep.ledger, v.mon).Tenants {
		if ts.Name != "evil" {
			continue
		}
		if ts.Period != n || ts.PeriodEnd == nil || !ts.PeriodEnd.Equal(end) {
			t.Errorf("%s: snapshot period %d ending %v, want %d ending %v", id, ts.Period, ts.PeriodEnd, n, end)
		}
		switch p := ts.PreviousPeriod; {
		case n == 1 && p != nil:
			t.Errorf("%s: a previous period before any close: %+v", id, p)
		case n > 1 && (p == nil || p.Number != n-1 || p.Evaluations != prevEvals):
			t.Errorf("%s: previous period %+v, want number %d with %d evaluations", id, p, n-1, prevEvals)
		}
	}
}

// Runs stopped by their own limits — a tool over its operations, a tool
// past its timeout, a tool's child process writing past its file size —
// on two replicas of the service on one Redis: each replica counts
// exactly the requests it served as run stops of their tenant, once per
// request although each stop passes from the tool to the request, in
// AccountStats, the Monitor's run_stopped events, Prometheus and the
// status page's snapshot. A period close (made on one replica, followed
// by the other through the store) moves the period number on on both and
// shows the closed period's line, while the run-stop counters do not
// drop, and count on from there.
func TestRunStopsAndPeriodsVisible(t *testing.T) {
	end := time.Now().Add(time.Hour).Truncate(time.Second)
	f := newFleet(t, fleetConfig{
		replicas:   2,
		plans:      map[string]reslimit.AccountLimits{"evil": {}, "good": {MaxTotalOperations: 1e9}},
		ledgerOpts: []reslimit.LedgerOption{reslimit.WithPeriodSchedule(func(time.Time) time.Time { return end })},
	})
	r1, r2 := f.replicas[0], f.replicas[1]
	v1, v2 := newOpsView(t, r1), newOpsView(t, r2)

	stopped := func(rep *replica, plan string, n int) {
		t.Helper()
		_, last := f.send(t, rep, "evil", plan, n, false)
		if last.status != http.StatusServiceUnavailable {
			t.Fatalf("%s on %s: status %d %s, want 503 (a stop by the tool's own limit)", plan, rep.id, last.status, last.raw)
		}
	}
	stopped(r1, "host,overrun", 3)
	stopped(r1, "stall", 2)
	stopped(r1, "bigfile", 1)
	stopped(r2, "overrun", 2)
	for _, rep := range f.replicas {
		if _, last := f.send(t, rep, "good", "host,ops", 3, false); last.status != http.StatusOK {
			t.Fatalf("good on %s: %d %s", rep.id, last.status, last.raw)
		}
	}
	want1 := map[reslimit.Resource]int64{reslimit.Operations: 3, reslimit.Timeout: 2, reslimit.FileSize: 1}
	want2 := map[reslimit.Resource]int64{reslimit.Operations: 2}
	v1.checkRunStops(t, want1, want1)
	v2.checkRunStops(t, want2, want2)
	v1.checkPeriod(t, 1, end, 0)
	v2.checkPeriod(t, 1, end, 0)

	// A close on r1, which r2 follows at its sync.
	r1.ClosePeriod()
	f.SyncAll()
	v1.checkPeriod(t, 2, end, 6)
	v2.checkPeriod(t, 2, end, 2)
	for _, v := range []*opsView{v1, v2} {
		if got, _ := v.metric(t, "reslimit_tenant_evaluations_total", "evil", ""); got != 0 {
			t.Errorf("%s: reslimit_tenant_evaluations_total{evil} = %v after the close, want 0 (it restarts)", v.rep.id, got)
		}
	}
	v1.checkRunStops(t, want1, nil)
	v2.checkRunStops(t, want2, nil)

	stopped(r2, "overrun", 1)
	v2.checkRunStops(t, map[reslimit.Resource]int64{reslimit.Operations: 3}, map[reslimit.Resource]int64{reslimit.Operations: 1})
	f.Close()
}
