package reslimit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/reslimit/reslimit/store"
)

// BenchmarkFleetTrackOperation compares the hot path on runs of an account
// of a store-backed ledger with the same on an in-memory ledger: the store
// is only reached by the background syncer, never by TrackOperation.
func BenchmarkFleetTrackOperation(b *testing.B) {
	limits := AccountLimits{MaxTotalOperations: 1 << 60}
	for _, mode := range []string{"in-memory", "store"} {
		b.Run(mode, func(b *testing.B) {
			var l *Ledger
			if mode == "store" {
				l = mustLedger(b, limits, WithStore(store.NewMemory()), WithReplica("bench"), WithSyncInterval(100*time.Millisecond))
				defer func() { _ = l.Close(context.Background()) }()
			} else {
				l = mustLedger(b, limits)
			}
			acct := l.Account("t")
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				tr, err := acct.Begin(Unlimited())
				if err != nil {
					b.Error(err)
					return
				}
				defer tr.End()
				for pb.Next() {
					if err := tr.TrackOperation(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkFleetSync100Tenants is one Ledger.Sync round trip reporting 100
// tenants to the in-memory store; ns/tenant is the cost per tenant on the
// replica's side (the Redis store's own benchmark adds the network).
func BenchmarkFleetSync100Tenants(b *testing.B) {
	l := mustLedger(b, AccountLimits{MaxTotalOperations: 1 << 60}, WithStore(store.NewMemory()), WithReplica("bench"), WithSyncInterval(time.Hour))
	defer func() { _ = l.Close(context.Background()) }()
	runs := make([]*Tracker, 100)
	for i := range runs {
		tr, err := l.Account(fmt.Sprintf("tenant-%03d", i)).Begin(Unlimited())
		if err != nil {
			b.Fatal(err)
		}
		runs[i] = tr
	}
	defer func() {
		for _, tr := range runs {
			tr.End()
		}
	}()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		for _, tr := range runs {
			_ = tr.TrackOperations(10)
		}
		if err := l.Sync(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/100, "ns/tenant")
}

// BenchmarkFleetRate compares an evaluation (Begin+End) of a tenant with
// an evaluation rate in a store-backed ledger: the rate per process
// (WithPerProcessRates, an x/time/rate bucket taken in batches) and
// fleet-wide (a lease of the store's bucket, refilled by the syncer). The
// rate never refuses here (1e9 a second): what is measured is what the
// rate costs an evaluation. EvaluationToken is the rate's part alone,
// under the account's lock as Begin takes it.
func BenchmarkFleetRate(b *testing.B) {
	limits := AccountLimits{EvaluationsPerSecond: 1e9}
	for _, c := range []struct {
		name string
		opts []LedgerOption
	}{
		{"per-process", []LedgerOption{WithPerProcessRates()}},
		{"fleet-wide", nil},
	} {
		newAcct := func(b *testing.B) *Account {
			opts := append([]LedgerOption{WithStore(store.NewMemory()), WithReplica("bench"), WithSyncInterval(100 * time.Millisecond)}, c.opts...)
			l := mustLedger(b, limits, opts...)
			b.Cleanup(func() { _ = l.Close(context.Background()) })
			return l.Account("t")
		}
		b.Run("BeginEnd-"+c.name, func(b *testing.B) {
			acct := newAcct(b)
			b.ReportAllocs()
			for b.Loop() {
				tr, err := acct.Begin(Limits{})
				if err != nil {
					b.Fatal(err)
				}
				tr.End()
			}
		})
		b.Run("EvaluationToken-"+c.name, func(b *testing.B) {
			acct := newAcct(b)
			acct.mu.Lock()
			if fr, ok := acct.mu.rates.evals.(*fleetRate); ok {
				fr.lease = 1 << 50 // a lease that lasts the benchmark
			}
			acct.mu.Unlock()
			now := time.Now()
			b.ReportAllocs()
			for b.Loop() {
				now = now.Add(time.Microsecond)
				acct.mu.Lock()
				if err := acct.takeEvaluationLocked(now); err != nil {
					b.Fatal(err)
				}
				acct.mu.Unlock()
			}
		})
	}
}
