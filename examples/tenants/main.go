// Command tenants simulates a multi-tenant service: a few tenants with
// different quotas call one limited tool concurrently, and a billing table
// shows what each consumed and which limit stopped it.
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
		if err := tr.Step(); err != nil {
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

func main() {
	quotas := map[string]reslimit.AccountLimits{
		"free":       {MaxEvaluations: 20, MaxTotalOperations: 150_000, MaxConcurrent: 2},
		"pro":        {MaxTotalOperations: 2_000_000, MaxCalls: 400, MaxMemory: 8 << 20},
		"enterprise": {MaxCPUTime: 2 * time.Second, MaxConcurrent: 8},
	}
	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{}, reslimit.WithTenantLimits(func(tenant string) reslimit.AccountLimits {
		return quotas[tenant] // each tenant's plan
	}))
	if err != nil {
		log.Fatal(err)
	}
	tool := reslimit.Limit(analyze, reslimit.Limits{MaxMemoryBytes: 4 << 20, MaxOperations: 50_000, Timeout: 2 * time.Second})

	type tally struct {
		ok, refused int
		stoppedBy   map[string]int
	}
	var mu sync.Mutex
	tallies := map[string]*tally{}
	var wg sync.WaitGroup
	for tenant := range quotas {
		tallies[tenant] = &tally{stoppedBy: map[string]int{}}
		for worker := 0; worker < 4; worker++ {
			wg.Add(1)
			go func(tenant string, seed uint64) {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(seed, 7))
				ctx := reslimit.ContextWithAccount(context.Background(), ledger.Account(tenant))
				for i := 0; i < 15; i++ {
					_, err := tool(ctx, 50+rng.IntN(400))
					mu.Lock()
					t := tallies[tenant]
					var le *reslimit.LimitError
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
			}(tenant, uint64(worker))
		}
	}
	wg.Wait()

	fmt.Println("Billing period summary (60 calls per tenant, 4 concurrent workers each)")
	fmt.Println()
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
