package redisstore_test

import (
	"context"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/contrib/redisstore"
)

// Two replicas of a service share tenant acme's quota of 1000 operations
// through Redis: each ledger charges against a lease from the store, Sync
// reports what it charged, and the store's committed totals are the
// fleet's. Here Redis is miniredis, an in-process fake, and both replicas
// run in one process; in production rdb is a client of the real server
// and each replica is a process of its own.
func Example() {
	srv, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	st, err := redisstore.New(rdb)
	if err != nil {
		panic(err)
	}

	ctx := context.Background()
	quota := reslimit.AccountLimits{MaxTotalOperations: 1000} // each tenant's, fleet-wide
	replica := func(id string) *reslimit.Ledger {
		l, err := reslimit.NewLedger(quota, reslimit.WithStore(st), reslimit.WithReplica(id),
			reslimit.WithSyncInterval(100*time.Millisecond),
			reslimit.WithLeaseWait(5*time.Second)) // how long a charge may wait for a lease
		if err != nil {
			panic(err)
		}
		return l
	}
	a, b := replica("replica-a"), replica("replica-b")
	defer a.Close(ctx) // the final report; gives the lease back
	defer b.Close(ctx)

	// charge runs one request of tenant acme on replica l, counting ops
	// operations.
	charge := func(l *reslimit.Ledger, ops int64) error {
		_, err := reslimit.Run(ctx, reslimit.Limits{}, func(ctx context.Context) error {
			return reslimit.FromContext(ctx).TrackOperations(ops)
		}, reslimit.WithAccount(l.Account("acme")))
		return err
	}
	fmt.Println("replica-a, 100 operations:", charge(a, 100))
	fmt.Println("replica-b, 50 operations:", charge(b, 50))

	for _, l := range []*reslimit.Ledger{a, b} {
		if err := l.Sync(ctx); err != nil { // report now rather than within the interval
			panic(err)
		}
	}
	committed, err := st.Load(ctx, "acme")
	if err != nil {
		panic(err)
	}
	fmt.Printf("committed fleet-wide: %d operations in %d runs\n", committed.Operations, committed.Evaluations)

	// 850 operations are left to the whole fleet: a request for one more
	// is refused on either replica, whole (a refusal charges nothing).
	fmt.Println("replica-a, 851 operations:", charge(a, 851))
	fmt.Println("replica-b, 851 operations:", charge(b, 851))
	// Output:
	// replica-a, 100 operations: <nil>
	// replica-b, 50 operations: <nil>
	// committed fleet-wide: 150 operations in 2 runs
	// replica-a, 851 operations: reslimit: tenant "acme" operations limit 1000 exceeded: used 150, requested 851
	// replica-b, 851 operations: reslimit: tenant "acme" operations limit 1000 exceeded: used 150, requested 851
}
