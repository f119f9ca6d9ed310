package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/reslimit/reslimit"
)

// loadResult is what the load generator saw for one tenant.
type loadResult struct {
	granted  granted
	requests int
	statuses map[string]int // "200", "429 operations", ...
}

// loadGen sends requests from several goroutines per tenant and replica
// and counts, per tenant, what was granted (the X-E2e-* headers of every
// response whose handler ran) and every status. It checks every refusal's
// status (checkRefusal), and that a tenant is refused only for one of
// allowed[tenant] (resource names; "" for none).
type loadGen struct {
	f          *fleet
	plans      []string // the tools of a request, round robin
	workers    int      // per tenant and replica
	maxReqs    int      // per worker
	duration   time.Duration
	allowed    map[string][]string
	resetKnown bool

	mu      sync.Mutex
	results map[string]*loadResult
	errs    map[string]*problem // by tenant, status and resource
}

// problem is one kind of wrong answer: how many, and the first.
type problem struct {
	count int
	first string
}

func (g *loadGen) record(tenant string, resp response, wrong string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.results == nil {
		g.results = map[string]*loadResult{}
	}
	r := g.results[tenant]
	if r == nil {
		r = &loadResult{statuses: map[string]int{}}
		g.results[tenant] = r
	}
	r.requests++
	r.granted = r.granted.add(resp.granted)
	key := fmt.Sprint(resp.status)
	if resp.status != http.StatusOK {
		key += " " + resp.body.Resource
	}
	r.statuses[key]++
	if wrong != "" {
		if g.errs == nil {
			g.errs = map[string]*problem{}
		}
		k := fmt.Sprintf("tenant %s, %s", tenant, key)
		if g.errs[k] == nil {
			g.errs[k] = &problem{first: wrong}
		}
		g.errs[k].count++
	}
}

// run sends the load for tenants and returns when every worker is done
// (maxReqs requests each, or the duration passed).
func (g *loadGen) run(tenants []string) {
	ctx, cancel := context.WithTimeout(context.Background(), g.duration)
	defer cancel()
	var wg sync.WaitGroup
	for ti, tenant := range tenants {
		_, known := g.f.cfg.plans[tenant]
		for _, rep := range g.f.replicas {
			for w := range g.workers {
				wg.Go(func() {
					for i := range g.maxReqs {
						if ctx.Err() != nil {
							return
						}
						plan := g.plans[(i+w+ti)%len(g.plans)]
						// The request's own context is not the load's: a request
						// in flight when the load ends finishes and is counted.
						rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
						resp, err := g.f.do(rctx, rep, tenant, plan)
						rcancel()
						if err != nil {
							g.record(tenant, resp, fmt.Sprintf("request %s to %s: %v", plan, rep.id, err))
							continue
						}
						problem := ""
						if resp.status != http.StatusOK {
							problem = checkRefusal(resp, tenant, known, g.resetKnown)
							if problem == "" && known && !g.isAllowed(tenant, resp) {
								problem = fmt.Sprintf("refused for a limit it does not have (or a false refusal): %d %s", resp.status, resp.raw)
							}
						}
						g.record(tenant, resp, problem)
					}
				})
			}
		}
	}
	wg.Wait()
}

// report fails t with every kind of wrong answer the load met.
func (g *loadGen) report(t *testing.T) {
	t.Helper()
	keys := make([]string, 0, len(g.errs))
	for k := range g.errs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Errorf("%s: %d wrong answers, the first: %s", k, g.errs[k].count, g.errs[k].first)
	}
}

func (g *loadGen) isAllowed(tenant string, resp response) bool {
	for _, a := range g.allowed[tenant] {
		if a == resp.body.Scope+"/"+resp.body.Resource {
			return true
		}
	}
	return false
}

// checkBill closes the last period (by hand on the first replica; the
// others follow it through the store), closes every ledger (final
// reports), and asserts, per tenant and per period: the sum of the
// replicas' lines == the store's period totals, every closed period Final,
// no period past a cumulative quota of the tenant's plan (the README:
// "the fleet never passes a limit"), nothing in the open period; and per
// tenant, over all periods, lines == store == want (what the load
// generator was granted; nil: not checked).
func checkBill(t *testing.T, f *fleet, want map[string]granted) {
	t.Helper()
	f.replicas[0].ClosePeriod()
	f.SyncAll()
	f.Close()

	lines := f.sumLines(t)
	var table strings.Builder
	fmt.Fprintf(&table, "%-6s %3s | %-44s | %-44s | %s\n", "tenant", "n", "replicas' lines (sum)", "store (LoadPeriod)", "final")
	for _, tenant := range sortedTenants(f.cfg.plans) {
		plan := f.cfg.plans[tenant]
		open := f.storePeriod(tenant, 0).Open
		var sumLines, sumStore granted
		for n := uint64(1); n <= open; n++ {
			sp := f.storePeriod(tenant, n)
			ln := lines[periodKey{tenant, n}]
			fmt.Fprintf(&table, "%-6s %3d | %-44v | %-44v | %v\n", tenant, n, totalsOf(ln), totalsOf(sp.Totals), sp.Final)
			sumLines = sumLines.add(totalsOf(ln))
			sumStore = sumStore.add(totalsOf(sp.Totals))
			if n == open {
				if !sp.Totals.IsZero() || !ln.IsZero() {
					t.Errorf("tenant %s: the open period %d holds usage after the last close: store %v, lines %v", tenant, n, totalsOf(sp.Totals), totalsOf(ln))
				}
				break
			}
			if !sp.Final {
				t.Errorf("tenant %s period %d: not Final after every replica closed it and was closed (open period %d)", tenant, n, open)
			}
			if got, w := totalsOf(sp.Totals), totalsOf(ln); got != w {
				t.Errorf("tenant %s period %d: store %v != replicas' lines %v (store - lines: %v)", tenant, n, got, w, diff(got, w))
			}
			// CPU time: the Redis store keeps whole microseconds and carries
			// each replica's sub-microsecond rest to its next report, which
			// may be in the next period: less than 1µs per replica either way.
			if d := (ln.CPUTime - sp.CPUTime).Abs(); d >= time.Duration(len(f.replicas))*time.Microsecond {
				t.Errorf("tenant %s period %d: store CPU %v, replicas' lines %v (want them within %dµs)", tenant, n, sp.CPUTime, ln.CPUTime, len(f.replicas))
			}
			for _, q := range []struct {
				name         string
				limit, store int64
			}{
				{"operations", plan.MaxTotalOperations, sp.Operations},
				{"calls", plan.MaxCalls, sp.Calls},
				{"evaluations", plan.MaxEvaluations, sp.Evaluations},
				{"total_memory", plan.MaxTotalMemory, sp.TotalMemory},
			} {
				if q.limit > 0 && q.store > q.limit {
					t.Errorf("tenant %s period %d: %s %d passed the quota %d by %d", tenant, n, q.name, q.store, q.limit, q.store-q.limit)
				}
			}
		}
		for k := range lines {
			if k.tenant == tenant && k.n > open {
				t.Errorf("tenant %s: lines for period %d, after the store's open period %d: %v", tenant, k.n, open, totalsOf(lines[k]))
			}
		}
		if sumLines != sumStore {
			t.Errorf("tenant %s, all periods: store %v != replicas' lines %v (store - lines: %v)", tenant, sumStore, sumLines, diff(sumStore, sumLines))
		}
		if w, ok := want[tenant]; ok && (sumLines != w || sumStore != w) {
			t.Errorf("tenant %s, all periods: granted to the load generator %v; replicas' lines %v (lines - granted: %v); store %v (store - granted: %v)",
				tenant, w, sumLines, diff(sumLines, w), sumStore, diff(sumStore, w))
		}
	}
	t.Logf("per tenant and period:\n%s", table.String())
}

func diff(a, b granted) string {
	return fmt.Sprintf("evals%+d ops%+d calls%+d mem%+d", a.Evaluations-b.Evaluations, a.Operations-b.Operations, a.Calls-b.Calls, a.TotalMemory-b.TotalMemory)
}

// TestEndToEnd is the guard of issue 19: the service as the README builds
// it, two replicas on one Redis, billing periods closing every 400ms, four
// tenants with quotas and rates, and a load generator; the bill must be
// exact per tenant and period.
func TestEndToEnd(t *testing.T) {
	const period = 400 * time.Millisecond
	plans := map[string]reslimit.AccountLimits{
		// No limit binds: billing alone, and no refusal is allowed.
		"alpha": {MaxTotalOperations: 1e12, MaxCalls: 1e12},
		// A tight operations quota per period.
		"beta": {MaxTotalOperations: 2500},
		// A calls quota and an evaluation rate (fleet-wide).
		"gamma": {MaxCalls: 600, EvaluationsPerSecond: 40, EvaluationBurst: 4},
		// An evaluations quota and an operation rate (fleet-wide).
		"delta": {MaxEvaluations: 30, OperationsPerSecond: 4000, OperationBurst: 1000},
	}
	f := newFleet(t, fleetConfig{
		replicas: 2,
		plans:    plans,
		period:   period,
		request:  reslimit.Limits{Timeout: 20 * time.Second},
	})
	gen := &loadGen{
		f: f,
		plans: []string{
			"host,ops", "host,ops,star", "ops,wasm", "host,exec",
			"ops,overrun", "star,wasm,ops", "host,star", "host,wasmi",
		},
		workers:    2,
		maxReqs:    400,
		duration:   2500 * time.Millisecond,
		resetKnown: true,
		allowed: map[string][]string{
			"alpha": {"request/operations"}, // the overrun tool's own limit
			"beta":  {"request/operations", "tenant/operations"},
			"gamma": {"request/operations", "tenant/function_calls", "tenant/evaluation_rate"},
			"delta": {"request/operations", "tenant/evaluations", "tenant/operation_rate"},
		},
	}
	gen.run(append(sortedTenants(plans), "nobody"))

	var summary strings.Builder
	want := map[string]granted{}
	for _, tenant := range append(sortedTenants(plans), "nobody") {
		r := gen.results[tenant]
		if r == nil {
			t.Errorf("tenant %s: no request was answered", tenant)
			continue
		}
		if tenant != "nobody" {
			want[tenant] = r.granted
		}
		var st []string
		for k, v := range r.statuses {
			st = append(st, fmt.Sprintf("%s×%d", k, v))
		}
		sort.Strings(st)
		fmt.Fprintf(&summary, "%-6s %4d requests, granted %v; %s\n", tenant, r.requests, r.granted, strings.Join(st, ", "))
	}
	t.Logf("load:\n%s", summary.String())
	gen.report(t)
	if r := gen.results["nobody"]; r != nil && r.granted != (granted{}) {
		t.Errorf("the unknown tenant was granted %v", r.granted)
	}
	checkBill(t, f, want)
}
