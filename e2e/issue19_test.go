package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/reslimit/reslimit"
)

// One focused test per item of issue 19 that involves composition, so
// that each item's state shows on its own.

// send sends n requests for tenant to rep one after the other, stopping at
// the first that is not answered 200 when stopAtRefusal. It fails t for a
// request error or a wrong refusal status, and returns what was granted
// and the last response.
func (f *fleet) send(t *testing.T, rep *replica, tenant, plan string, n int, stopAtRefusal bool) (granted, response) {
	t.Helper()
	var g granted
	var last response
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		resp, err := f.do(ctx, rep, tenant, plan)
		cancel()
		if err != nil {
			t.Fatalf("request %d (%s) to %s: %v", i, plan, rep.id, err)
		}
		g = g.add(resp.granted)
		last = resp
		if resp.status != http.StatusOK {
			_, known := f.cfg.plans[tenant]
			if p := checkRefusal(resp, tenant, known, f.cfg.period > 0); p != "" {
				t.Errorf("request %d (%s) to %s: %s", i, plan, rep.id, p)
			}
			if stopAtRefusal {
				break
			}
		}
	}
	return g, last
}

// openTotals closes the fleet (final reports) and returns the tenant's
// totals in the store's open period.
func (f *fleet) openTotals(t *testing.T, tenant string) granted {
	t.Helper()
	f.Close()
	return totalsOf(f.storePeriod(tenant, 0).Totals)
}

// Item 1: a Limit'ed tool, a reslimitexec child and a Starlark script run
// inside a request of the store-backed middleware are billed to the store
// exactly once (what the request's run was granted).
func TestIssue19Item1NestedRunsBillTheStoreOnce(t *testing.T) {
	// Under a plan without quotas and one with quotas that never bind
	// (the store's path differs: a resource without a limit is not leased).
	for _, plan := range []struct {
		name   string
		limits reslimit.AccountLimits
	}{
		{"no-quotas", reslimit.AccountLimits{}},
		{"quotas", reslimit.AccountLimits{MaxTotalOperations: 1e12, MaxCalls: 1e12}},
	} {
		plans := map[string]reslimit.AccountLimits{"acme": plan.limits}
		t.Run(plan.name+"/limit-tool-serial", func(t *testing.T) {
			f := newFleet(t, fleetConfig{replicas: 1, plans: plans})
			g, _ := f.send(t, f.replicas[0], "acme", "ops", 179, false)
			if got := f.openTotals(t, "acme"); got != g {
				t.Errorf("179 requests of a tool of %d ops and %d calls: store %v, granted %v (store - granted: %v)", toolOps, toolCalls, got, g, diff(got, g))
			}
		})
		t.Run(plan.name+"/limit-tool-3-workers", func(t *testing.T) {
			f := newFleet(t, fleetConfig{replicas: 1, plans: plans})
			var mu sync.Mutex
			var g granted
			var wg sync.WaitGroup
			for range 3 {
				wg.Go(func() {
					h, _ := f.send(t, f.replicas[0], "acme", "ops", 120, false)
					mu.Lock()
					g = g.add(h)
					mu.Unlock()
				})
			}
			wg.Wait()
			if got := f.openTotals(t, "acme"); got != g {
				t.Errorf("3×120 requests of a tool of %d ops and %d calls: store %v, granted %v (store - granted: %v)", toolOps, toolCalls, got, g, diff(got, g))
			}
		})
		t.Run(plan.name+"/exec-child", func(t *testing.T) {
			f := newFleet(t, fleetConfig{replicas: 1, plans: plans})
			g, _ := f.send(t, f.replicas[0], "acme", "exec", 20, false)
			// (Its memory is what the runs were charged: g.TotalMemory is
			// read from the tools' runs.)
			if got := f.openTotals(t, "acme"); got != g {
				t.Errorf("20 requests running /bin/true (1 call each): store %v, the runs were charged %v (store - runs: %v)", got, g, diff(got, g))
			}
		})
		t.Run(plan.name+"/starlark", func(t *testing.T) {
			f := newFleet(t, fleetConfig{replicas: 1, plans: plans})
			steps := newTools(t).starSteps
			g, _ := f.send(t, f.replicas[0], "acme", "star", 20, false)
			if got := f.openTotals(t, "acme"); got != g {
				t.Errorf("20 requests of a %d-step script: store %v, granted %v (store - granted: %v)", steps, got, g, diff(got, g))
			}
		})
		t.Run(plan.name+"/every-tool", func(t *testing.T) {
			f := newFleet(t, fleetConfig{replicas: 1, plans: plans})
			g, _ := f.send(t, f.replicas[0], "acme", "host,ops,star,wasm,exec", 40, false)
			if got := f.openTotals(t, "acme"); got != g {
				t.Errorf("40 requests running every tool: store %v, granted %v (store - granted: %v)", got, g, diff(got, g))
			}
		})
	}
}

// Item 2: two replicas, periods closing every 300ms, nested tools, a
// binding operations quota: per tenant and period, the sum of the
// replicas' lines == the store's totals == what was granted, within the
// quota.
func TestIssue19Item2PeriodInvoiceIsTheSumOfTheLines(t *testing.T) {
	plans := map[string]reslimit.AccountLimits{
		"acme": {MaxTotalOperations: 3000},
		"umbr": {MaxTotalOperations: 1e12, MaxCalls: 1e12},
	}
	f := newFleet(t, fleetConfig{replicas: 2, plans: plans, period: 300 * time.Millisecond, request: reslimit.Limits{Timeout: 20 * time.Second}})
	gen := &loadGen{
		f: f, plans: []string{"ops", "host,ops"}, workers: 2, maxReqs: 300, duration: 1500 * time.Millisecond,
		resetKnown: true,
		allowed:    map[string][]string{"acme": {"tenant/operations"}},
	}
	gen.run(sortedTenants(plans))
	gen.report(t)
	want := map[string]granted{}
	for tenant, r := range gen.results {
		want[tenant] = r.granted
		t.Logf("%s: %d requests, granted %v, %v", tenant, r.requests, r.granted, r.statuses)
	}
	checkBill(t, f, want)
}

// Item 3: a child is charged what it held, not the server's peak: once
// the server has held more than a request's MaxMemoryBytes, /bin/true
// (about 1.5 MiB resident) still runs under it.
func TestIssue19Item3ChildNotBilledTheServersPeak(t *testing.T) {
	const limit = 32 << 20
	plans := map[string]reslimit.AccountLimits{"acme": {}}
	f := newFleet(t, fleetConfig{replicas: 1, plans: plans, request: reslimit.Limits{MaxMemoryBytes: limit, Timeout: 20 * time.Second}})
	// The server holds 4× the request's limit (resident: every page
	// written), as a server that once served a large request does. (A
	// binary built with -race is past the limit already.)
	heap := make([]byte, 4*limit)
	for i := 0; i < len(heap); i += 4096 {
		heap[i] = 1
	}
	t.Logf("the server's peak resident memory: %s", peakRSS())
	for i := range 5 {
		g, resp := f.send(t, f.replicas[0], "acme", "exec", 1, false)
		if resp.status != http.StatusOK {
			t.Errorf("/bin/true under %d MiB once the server held %d MiB (request %d): %d %s", limit>>20, len(heap)>>20, i, resp.status, resp.raw)
		} else if g.TotalMemory >= limit {
			t.Errorf("/bin/true charged %d bytes (%d MiB) of memory", g.TotalMemory, g.TotalMemory>>20)
		}
	}
	runtime.KeepAlive(heap)
}

// peakRSS reads the process's peak resident memory (VmHWM) on Linux.
func peakRSS() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// Item 4: a tenant's MaxCPUTime shared by two replicas on one store is
// passed by no more than the README's bound for one process: about 10ms
// per spinning thread plus how late the machine fires timers (allowed
// here: 30ms, the README's worst for four calls under -race). When the
// README states a fleet bound (issue 19), use it here.
func TestIssue19Item4TenantCPUQuotaAcrossReplicas(t *testing.T) {
	const (
		quota   = 600 * time.Millisecond
		workers = 2 // per replica
		perThr  = 10 * time.Millisecond
		timers  = 30 * time.Millisecond
	)
	plans := map[string]reslimit.AccountLimits{"acme": {MaxCPUTime: quota}}
	f := newFleet(t, fleetConfig{replicas: 2, plans: plans, request: reslimit.Limits{Timeout: 20 * time.Second}})
	var wg sync.WaitGroup
	var mu sync.Mutex
	refused := 0
	for _, rep := range f.replicas {
		for range workers {
			wg.Go(func() {
				// Spin until the tenant's quota refuses (at most 30 requests).
				for range 30 {
					_, resp := f.send(t, rep, "acme", "spin", 1, true)
					if resp.status == http.StatusTooManyRequests && resp.body.Resource == reslimit.CPUTime.String() {
						mu.Lock()
						refused++
						mu.Unlock()
						return
					}
					if resp.status != http.StatusTooManyRequests && resp.status != http.StatusServiceUnavailable {
						t.Errorf("a spinning request answered %d %s", resp.status, resp.raw)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	if refused != 2*workers {
		t.Errorf("%d of %d workers were refused with cpu_time", refused, 2*workers)
	}
	f.Close()
	sp := f.storePeriod("acme", 0)
	bound := quota + 2*workers*perThr + timers
	t.Logf("CPU time billed: %v of a %v quota (over by %v; bound %v)", sp.CPUTime, quota, sp.CPUTime-quota, bound-quota)
	if sp.CPUTime > bound {
		t.Errorf("two replicas × %d spinning requests used %v of a %v tenant quota: over by %v, want at most %v (%v per thread + %v)",
			workers, sp.CPUTime, quota, sp.CPUTime-quota, bound-quota, perThr, timers)
	}
}

// Item 5: Redis loses its data (FLUSHALL) after a close. A closed period
// never reads Final with totals other than what was charged in it, the
// open period is billed only what was charged in it, and its quota starts
// from that: the tenant is not refused before it used its quota (less at
// most one lease floor per replica), nor granted more than a quarter of
// the quota (the largest lease) past it.
func TestIssue19Item5RedisDataLossAfterAClose(t *testing.T) {
	const quota = 16000
	rdb := privateRedis(t)
	plans := map[string]reslimit.AccountLimits{"beta": {MaxTotalOperations: quota}}
	f := newFleet(t, fleetConfig{replicas: 2, plans: plans, rdb: rdb, request: reslimit.Limits{Timeout: 20 * time.Second}})
	r1 := f.replicas[0]
	p1 := closeFinalPeriod(t, f, "beta", 100)

	// Period 2: 2×20 requests, reported; then Redis loses everything.
	var p2 granted
	for _, rep := range f.replicas {
		g, _ := f.send(t, rep, "beta", "ops", 20, false)
		p2 = p2.add(g)
	}
	f.SyncAll()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.FlushAll(ctx).Err(); err != nil { // the test's own redis-server
		t.Fatal(err)
	}

	// Period 2 goes on, on r1 alone, until the quota refuses.
	g, last := f.send(t, r1, "beta", "ops", quota/toolOps+200, true)
	p2 = p2.add(g)
	if last.status == http.StatusOK {
		t.Errorf("never refused: period 2 granted %v", p2)
	} else if last.body.Resource != reslimit.Operations.String() {
		t.Errorf("refused for %s, want operations: %s", last.body.Resource, last.raw)
	}
	f.Close()

	checkLostPeriod(t, f, "beta", p1)
	sp2 := f.storePeriod("beta", 0)
	t.Logf("period %d (open) in the store: %v (granted in it %v)", sp2.Number, totalsOf(sp2.Totals), p2)
	if sp2.Number != 2 {
		t.Errorf("the open period is %d, want 2", sp2.Number)
	}
	if got := totalsOf(sp2.Totals); got != p2 {
		t.Errorf("period 2 (open) in the store: %v, granted in it %v (store - granted: %v)", got, p2, diff(got, p2))
	}
	const floor = 1024 // the lease floor: what the other replica may hold unused
	if p2.Operations < quota-2*floor || p2.Operations > quota+quota/4 {
		t.Errorf("period 2: %d operations granted before the quota of %d refused, want within [%d, %d]: %s",
			p2.Operations, quota, quota-2*floor, quota+quota/4, fmt.Sprint(last.raw))
	}
}

// closeFinalPeriod sends n requests of the ops tool for tenant on every
// replica of f, closes the period (by hand on the first replica; the
// others at their next sync), syncs until the closed period is Final in
// the store and checks that it holds what was granted, which it returns.
func closeFinalPeriod(t *testing.T, f *fleet, tenant string, n int) granted {
	t.Helper()
	var p1 granted
	for _, rep := range f.replicas {
		g, _ := f.send(t, rep, tenant, "ops", n, false)
		p1 = p1.add(g)
	}
	f.replicas[0].ClosePeriod()
	f.SyncAll() // the others close their own; all send their final reports for period 1
	deadline := time.Now().Add(10 * time.Second)
	for !f.storePeriod(tenant, 1).Final {
		if time.Now().After(deadline) {
			t.Fatalf("period 1 not Final before the flush: %+v", f.storePeriod(tenant, 1))
		}
		f.SyncAll()
	}
	if sp := f.storePeriod(tenant, 1); totalsOf(sp.Totals) != p1 {
		t.Errorf("before the flush, period 1 in the store: %v, granted %v", totalsOf(sp.Totals), p1)
	}
	return p1
}

// checkLostPeriod checks period 1 of tenant after the store lost its data:
// the replicas' invoice lines hold what was granted in it (p1), and the
// store reads it as lost, never Final (and never Final with other totals).
func checkLostPeriod(t *testing.T, f *fleet, tenant string, p1 granted) {
	t.Helper()
	lines := f.sumLines(t)
	if got := totalsOf(lines[periodKey{tenant, 1}]); got != p1 {
		t.Errorf("period 1: replicas' lines %v, granted %v", got, p1)
	}
	sp1 := f.storePeriod(tenant, 1)
	t.Logf("after the flush, period 1 in the store: %v Final=%v Lost=%v (granted %v)", totalsOf(sp1.Totals), sp1.Final, sp1.Lost, p1)
	if !sp1.Lost || sp1.Final {
		t.Errorf("period 1 after the flush: Lost=%v Final=%v, want a lost period, never final", sp1.Lost, sp1.Final)
	}
	if sp1.Final && totalsOf(sp1.Totals) != p1 {
		t.Errorf("period 1 reads Final with %v after the flush, but %v was charged in it (store - granted: %v)", totalsOf(sp1.Totals), p1, diff(totalsOf(sp1.Totals), p1))
	}
}
