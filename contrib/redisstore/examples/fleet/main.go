// Command fleet runs three replicas of a service in one process, sharing
// one tenant's quota through a store: Redis at $RESLIMIT_REDIS_ADDR, or the
// in-memory store when that is unset. Each replica serves the tenant from
// its own goroutines; the table shows how the quota was shared between
// them and that the fleet stopped at the limit.
//
//	RESLIMIT_REDIS_ADDR=127.0.0.1:6379 go run ./examples/fleet
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/contrib/redisstore"
	"github.com/reslimit/reslimit/store"
)

const (
	tenant = "acme"
	quota  = 200_000 // operations, fleet-wide
)

func main() {
	var shared store.Store
	if addr := os.Getenv("RESLIMIT_REDIS_ADDR"); addr != "" {
		rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
		defer rdb.Close()
		var b [4]byte
		_, _ = rand.Read(b[:])
		prefix := "reslimit-example-" + hex.EncodeToString(b[:]) // a fresh billing period per run
		s, err := redisstore.New(rdb, redisstore.WithKeyPrefix(prefix))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		shared = s
		fmt.Printf("store: Redis at %s, keys under %s:*\n", addr, prefix)
		defer cleanup(rdb, prefix)
	} else {
		shared = store.NewMemory()
		fmt.Println("store: in-memory (set RESLIMIT_REDIS_ADDR=host:port to share a real Redis)")
	}
	fmt.Printf("tenant %q has a fleet-wide quota of %d operations; 3 replicas serve it\n\n", tenant, quota)

	type replica struct {
		id               string
		ledger           *reslimit.Ledger
		granted, refused atomic.Int64
	}
	replicas := make([]*replica, 3)
	for i := range replicas {
		id := fmt.Sprintf("replica-%d", i+1)
		ledger, err := reslimit.NewLedger(
			reslimit.AccountLimits{MaxTotalOperations: quota},
			reslimit.WithStore(shared), reslimit.WithReplica(id),
			reslimit.WithSyncInterval(100*time.Millisecond))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		replicas[i] = &replica{id: id, ledger: ledger}
	}

	// Replica 1 is busiest, replica 3 the least: leases follow each one's rate.
	var wg sync.WaitGroup
	for i, r := range replicas {
		for w := 0; w < 3-i; w++ {
			wg.Add(1)
			go func(r *replica) {
				defer wg.Done()
				acct := r.ledger.Account(tenant)
				for {
					tr, err := acct.Begin(reslimit.Limits{MaxOperations: 2000})
					if err != nil {
						r.refused.Add(1)
						return // the tenant is out of quota fleet-wide
					}
					n := int64(0)
					for tr.TrackOperation() == nil {
						n++
						if n%200 == 0 {
							time.Sleep(time.Millisecond) // some real work between checks
						}
					}
					tr.End()
					r.granted.Add(n)
					if n == 0 {
						r.refused.Add(1)
						return
					}
				}
			}(r)
		}
	}
	wg.Wait()

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "replica\tworkers\toperations granted\tshare\tsyncs\tlease left\t")
	var total int64
	for i, r := range replicas {
		s := r.ledger.Account(tenant).Stats()
		total += r.granted.Load()
		fmt.Fprintf(w, "%s\t%d\t%d\t%.0f%%\t%d\t%d\t\n", r.id, 3-i, r.granted.Load(),
			100*float64(r.granted.Load())/quota, s.Fleet.Syncs, s.Fleet.Lease.Operations)
	}
	w.Flush()
	ctx := context.Background()
	for _, r := range replicas {
		if err := r.ledger.Close(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "close:", err)
		}
	}
	committed, err := shared.Load(ctx, tenant)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("\ngranted by the fleet: %d of %d (%.1f%%); committed in the store: %d operations, %d runs\n",
		total, quota, 100*float64(total)/quota, committed.Operations, committed.Evaluations)
	if total > quota || committed.Operations != total {
		fmt.Println("MISMATCH")
		os.Exit(1)
	}
}

func cleanup(rdb *redis.Client, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys, _ := rdb.Keys(ctx, prefix+":*").Result()
	if len(keys) > 0 {
		rdb.Del(ctx, keys...)
	}
}
