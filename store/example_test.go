package store_test

import (
	"context"
	"fmt"
	"time"

	"github.com/reslimit/reslimit/store"
)

// Two replicas share a tenant's quota of 100 operations through a store:
// each reports what it used and asks for a lease; the store never grants
// past the limit, fleet-wide. (A reslimit.Ledger with reslimit.WithStore
// makes these calls itself; this is what a store implementer sees.)
func ExampleMemory() {
	ctx := context.Background()
	s := store.NewMemory()
	limit := store.Totals{Operations: 100}
	sync := func(replica string, seq uint64, used, want int64) store.TenantState {
		resp, err := s.Sync(ctx, store.SyncRequest{Replica: replica, LeaseTTL: time.Minute, Tenants: []store.TenantSync{{
			Tenant: "acme", Seq: seq, Limit: limit,
			Used: store.Totals{Operations: used}, Want: store.Totals{Operations: want},
		}}})
		if err != nil {
			panic(err)
		}
		return resp.Tenants[0]
	}
	a := sync("a", 1, 10, 60)
	fmt.Println("a: reported", a.Reported.Operations, "may hand out", a.Allowance.Operations)
	b := sync("b", 1, 5, 60)
	fmt.Println("b: reported", b.Reported.Operations, "may hand out", b.Allowance.Operations, "(what the limit leaves)")
	total, _ := s.Load(ctx, "acme")
	fmt.Println("committed fleet-wide:", total.Operations)
	// Output:
	// a: reported 10 may hand out 70
	// b: reported 5 may hand out 30 (what the limit leaves)
	// committed fleet-wide: 15
}
