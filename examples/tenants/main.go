// Command tenants simulates a multi-tenant service: a few tenants with
// different quotas and rates call one limited tool concurrently over two
// billing periods. After each period a table shows what each consumed and
// which limit stopped it; at the end, an invoice per tenant per period
// prices the closed periods from a price table. Last, two replicas of the
// service share one tenant's quota through a store, and the fleet-wide
// invoice is read from the store.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"sort"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/store"
)

// analyze is the "tool": it touches memory, calls a sub-tool a few times
// and loops, checking its budget as it goes.
func analyze(ctx context.Context, size int) (int, error) {
	tr := reslimit.FromContext(ctx)
	g, err := tr.AcquireMemory(int64(size) * 1024)
	if err != nil {
		return 0, err
	}
	defer g.Release()
	sum := 0
	for i := 0; i < size*100; i++ {
		if err := tr.TrackOperation(); err != nil {
			return 0, err
		}
		if i%1000 == 0 {
			if err := tr.TrackCall(); err != nil {
				return 0, err
			}
		}
		sum += i % 7
	}
	return sum, nil
}

// prices is the price table: what one unit of each quantity costs, in
// dollars.
var prices = struct {
	perMillionOps, perThousandCalls, perGiB, perCPUSecond, perEvaluation float64
}{perMillionOps: 0.40, perThousandCalls: 0.05, perGiB: 0.02, perCPUSecond: 0.10, perEvaluation: 0.001}

func cost(p reslimit.Period) float64 {
	return float64(p.Operations)/1e6*prices.perMillionOps +
		float64(p.Calls)/1e3*prices.perThousandCalls +
		float64(p.TotalMemory)/(1<<30)*prices.perGiB +
		p.CPUTime.Seconds()*prices.perCPUSecond +
		float64(p.Evaluations)*prices.perEvaluation
}

type tally struct {
	ok, refused int
	stoppedBy   map[string]int
}

func main() {
	quotas := map[string]reslimit.AccountLimits{
		// Quotas are per billing period: a close starts them over.
		"free": {MaxEvaluations: 20, MaxTotalOperations: 150_000, MaxConcurrent: 2},
		"pro":  {MaxTotalOperations: 2_000_000, MaxCalls: 400, MaxMemory: 8 << 20},
		// A rate: at most 200 runs a second, 10 at once after a pause.
		"enterprise": {MaxCPUTime: 2 * time.Second, MaxConcurrent: 8, EvaluationsPerSecond: 200, EvaluationBurst: 10},
	}
	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{}, reslimit.WithTenantLimits(func(tenant string) reslimit.AccountLimits {
		return quotas[tenant] // each tenant's plan
	}))
	if err != nil {
		log.Fatal(err)
	}
	// A service would close periods on a schedule, monthly say, with
	// reslimit.WithPeriodSchedule; here each round of calls is a period.
	tool := reslimit.Limit(analyze, reslimit.Limits{MaxMemoryBytes: 4 << 20, MaxOperations: 50_000, Timeout: 2 * time.Second})
	tenants := []string{"enterprise", "free", "pro"}
	for period := 1; period <= 2; period++ {
		tallies := simulate(ledger, tool, tenants, uint64(period))
		fmt.Printf("Billing period %d (60 calls per tenant, 4 concurrent workers each)\n\n", period)
		w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "TENANT\tEVALS\tOK\tREFUSED\tOPERATIONS\tCALLS\tCPU\tPEAK MEM\tEXHAUSTED\tSTOPPED BY")
		snap := ledger.Snapshot()
		for _, tenant := range ledger.Tenants() {
			s, t := snap[tenant], tallies[tenant]
			exhausted := "-"
			if r, ok := ledger.Account(tenant).Exhausted(); ok {
				exhausted = r.String()
			}
			fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%v\t%d KiB\t%s\t%s\n", tenant, s.Evaluations, t.ok, t.refused,
				s.Operations, s.Calls, s.CPUTime.Round(time.Millisecond), s.PeakMemoryBytes/1024, exhausted, reasons(t.stoppedBy))
		}
		w.Flush()
		fmt.Println()
		ledger.ClosePeriod() // every tenant's period, atomically: the lines are kept (ledger.Periods)
	}

	fmt.Println("Invoices")
	fmt.Println()
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "TENANT\tPERIOD\tEVALUATIONS\tOPERATIONS\tCALLS\tMEMORY CHARGED\tCPU\tPEAK MEM\tCOST\t")
	lines := ledger.Periods() // oldest period first, by tenant within a period
	sort.SliceStable(lines, func(i, j int) bool { return lines[i].Tenant < lines[j].Tenant })
	total := map[string]float64{}
	for _, p := range lines {
		c := cost(p)
		total[p.Tenant] += c
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%.1f MiB\t%v\t%d KiB\t$%.4f\t\n", p.Tenant, p.Number, p.Evaluations,
			p.Operations, p.Calls, float64(p.TotalMemory)/(1<<20), p.CPUTime.Round(time.Millisecond), p.PeakMemoryBytes/1024, c)
	}
	for _, tenant := range tenants {
		fmt.Fprintf(w, "%s\ttotal\t\t\t\t\t\t\t$%.4f\t\n", tenant, total[tenant])
	}
	w.Flush()
	fmt.Printf("\nprices: $%.2f per million operations, $%.2f per thousand calls, $%.2f per GiB charged, $%.2f per CPU second, $%.3f per evaluation\n",
		prices.perMillionOps, prices.perThousandCalls, prices.perGiB, prices.perCPUSecond, prices.perEvaluation)

	fleet(tool)
}

// fleet runs the "free" tenant on two replicas of the service that share
// its quota through a store (here in memory; contrib/redisstore in a real
// fleet), closes the period on one replica, and prints each replica's
// invoice line and the fleet-wide invoice the store keeps.
func fleet(tool func(context.Context, int) (int, error)) {
	ctx := context.Background()
	store := store.NewMemory()
	quota := reslimit.AccountLimits{MaxTotalOperations: 150_000}
	var replicas []*reslimit.Ledger
	for _, id := range []string{"replica-a", "replica-b"} {
		l, err := reslimit.NewLedger(quota, reslimit.WithStore(store), reslimit.WithReplica(id),
			reslimit.WithSyncInterval(50*time.Millisecond))
		if err != nil {
			log.Fatal(err)
		}
		replicas = append(replicas, l)
	}
	var wg sync.WaitGroup
	ok := make([]int, len(replicas))
	for i, l := range replicas {
		wg.Add(1)
		go func() { // each replica serves calls until the fleet's quota refuses
			defer wg.Done()
			tenantCtx := reslimit.ContextWithAccount(ctx, l.Account("free"))
			for {
				if _, err := tool(tenantCtx, 100); err != nil {
					return
				}
				ok[i]++
			}
		}()
	}
	wg.Wait()
	for _, l := range replicas {
		if err := l.Sync(ctx); err != nil { // report what is left to report
			log.Fatal(err)
		}
	}
	a := replicas[0].ClosePeriod() // a close on one replica is fleet-wide
	// Two rounds: the other replica learns of the close, then sends its
	// final report for the period (the store's totals are then final).
	for range 2 {
		for _, l := range replicas {
			if err := l.Sync(ctx); err != nil {
				log.Fatal(err)
			}
		}
	}
	b := replicas[1].Periods()
	sp, err := store.LoadPeriod(ctx, "free", a[0].Number) // the fleet-wide invoice
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("\nFleet: tenant \"free\" on two replicas sharing MaxTotalOperations %d through one store\n\n", quota.MaxTotalOperations)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "INVOICE\tPERIOD\tCALLS SERVED\tOPERATIONS\tCOST\t")
	fmt.Fprintf(w, "replica-a\t%d\t%d\t%d\t$%.4f\t\n", a[0].Number, ok[0], a[0].Operations, cost(a[0]))
	fmt.Fprintf(w, "replica-b\t%d\t%d\t%d\t$%.4f\t\n", b[0].Number, ok[1], b[0].Operations, cost(b[0]))
	fleetLine := reslimit.Period{Totals: sp.Totals}
	fmt.Fprintf(w, "fleet (store, final: %v)\t%d\t%d\t%d\t$%.4f\t\n", sp.Final, sp.Number, ok[0]+ok[1], sp.Operations, cost(fleetLine))
	w.Flush()
	for _, l := range replicas {
		if err := l.Close(ctx); err != nil {
			log.Fatal(err)
		}
	}
}

// simulate runs 4 workers per tenant, 15 calls each, and tallies the
// outcomes.
func simulate(ledger *reslimit.Ledger, tool func(context.Context, int) (int, error), tenants []string, seed uint64) map[string]*tally {
	var mu sync.Mutex
	tallies := map[string]*tally{}
	var wg sync.WaitGroup
	for _, tenant := range tenants {
		tallies[tenant] = &tally{stoppedBy: map[string]int{}}
		for worker := 0; worker < 4; worker++ {
			wg.Add(1)
			go func(tenant string, seed uint64) {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(seed, 7))
				ctx := reslimit.ContextWithAccount(context.Background(), ledger.Account(tenant))
				for i := 0; i < 15; i++ {
					_, err := tool(ctx, 50+rng.IntN(400))
					var le *reslimit.LimitError
					for try := 0; try < 3 && errors.As(err, &le) && le.RetryAfter > 0; try++ {
						// Above a rate: wait as told and try again.
						time.Sleep(le.RetryAfter)
						_, err = tool(ctx, 50+rng.IntN(400))
					}
					mu.Lock()
					t := tallies[tenant]
					switch {
					case err == nil:
						t.ok++
					case errors.As(err, &le):
						t.refused++
						level := "run"
						if le.Tenant != "" {
							level = "tenant"
						}
						t.stoppedBy[level+":"+le.Resource.String()]++
					default:
						t.refused++
						t.stoppedBy["error"]++
					}
					mu.Unlock()
				}
			}(tenant, seed*10+uint64(worker))
		}
	}
	wg.Wait()
	return tallies
}

func reasons(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := ""
	for i, k := range keys {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("%s×%d", k, m[k])
	}
	return out
}
