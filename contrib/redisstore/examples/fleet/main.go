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

// A replica is one instance of the service, with its own ledger, and what
// its workers were granted and refused.
type replica struct {
	id               string
	workers          int
	ledger           *reslimit.Ledger
	granted, refused atomic.Int64
}

func main() {
	shared, closeStore := openStore()
	defer closeStore()
	fmt.Printf("tenant %q has a fleet-wide quota of %d operations; 3 replicas serve it\n\n", tenant, quota)

	replicas := startReplicas(shared)
	serve(replicas)
	total := printShares(replicas)
	closeReplicas(replicas)
	checkCommitted(shared, total)
}

// openStore returns the store the replicas share, says which it is, and
// returns a function that removes what this run wrote to Redis and closes
// the client.
func openStore() (store.Store, func()) {
	addr := os.Getenv("RESLIMIT_REDIS_ADDR")
	if addr == "" {
		fmt.Println("store: in-memory (set RESLIMIT_REDIS_ADDR=host:port to share a real Redis)")
		return store.NewMemory(), func() {}
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	var b [4]byte
	_, _ = rand.Read(b[:])
	prefix := "reslimit-example-" + hex.EncodeToString(b[:]) // a fresh billing period per run
	s, err := redisstore.New(rdb, redisstore.WithKeyPrefix(prefix))
	if err != nil {
		rdb.Close()
		fatal(err)
	}
	fmt.Printf("store: Redis at %s, keys under %s:*\n", addr, prefix)
	return s, func() {
		cleanup(rdb, prefix)
		rdb.Close()
	}
}

// startReplicas starts three replicas on the shared store, each enforcing
// the tenant's quota; replica 1 gets the most workers, replica 3 the
// fewest.
func startReplicas(shared store.Store) []*replica {
	replicas := make([]*replica, 3)
	for i := range replicas {
		id := fmt.Sprintf("replica-%d", i+1)
		ledger, err := reslimit.NewLedger(
			reslimit.AccountLimits{MaxTotalOperations: quota},
			reslimit.WithStore(shared), reslimit.WithReplica(id),
			reslimit.WithSyncInterval(100*time.Millisecond))
		if err != nil {
			fatal(err)
		}
		replicas[i] = &replica{id: id, workers: 3 - i, ledger: ledger}
	}
	return replicas
}

// serve runs every replica's workers until the tenant is out of quota
// fleet-wide. Replica 1 is busiest, replica 3 the least: leases follow each
// one's rate.
func serve(replicas []*replica) {
	var wg sync.WaitGroup
	for _, r := range replicas {
		for range r.workers {
			wg.Go(func() { work(r) })
		}
	}
	wg.Wait()
}

// work is one worker of replica r: it runs for the tenant, up to 2000
// operations a run, until a run is refused or granted nothing.
func work(r *replica) {
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
}

// printShares prints how the quota was shared between the replicas and
// returns the operations granted by the fleet.
func printShares(replicas []*replica) int64 {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "replica\tworkers\toperations granted\tshare\tsyncs\tlease left\t")
	var total int64
	for _, r := range replicas {
		s := r.ledger.Account(tenant).Stats()
		total += r.granted.Load()
		fmt.Fprintf(w, "%s\t%d\t%d\t%.0f%%\t%d\t%d\t\n", r.id, r.workers, r.granted.Load(),
			100*float64(r.granted.Load())/quota, s.Fleet.Syncs, s.Fleet.Lease.Operations)
	}
	w.Flush()
	return total
}

// closeReplicas closes the replicas' ledgers, which commits what they
// charged to the store.
func closeReplicas(replicas []*replica) {
	for _, r := range replicas {
		if err := r.ledger.Close(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "close:", err)
		}
	}
}

// checkCommitted prints what the store committed for the tenant and exits
// with MISMATCH if the fleet granted more than the quota or the store does
// not hold what the fleet granted.
func checkCommitted(shared store.Store, total int64) {
	committed, err := shared.Load(context.Background(), tenant)
	if err != nil {
		fatal(err)
	}
	fmt.Printf("\ngranted by the fleet: %d of %d (%.1f%%); committed in the store: %d operations, %d runs\n",
		total, quota, 100*float64(total)/quota, committed.Operations, committed.Evaluations)
	if total > quota || committed.Operations != total {
		fmt.Println("MISMATCH")
		os.Exit(1)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func cleanup(rdb *redis.Client, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys, _ := rdb.Keys(ctx, prefix+":*").Result()
	if len(keys) > 0 {
		rdb.Del(ctx, keys...)
	}
}
