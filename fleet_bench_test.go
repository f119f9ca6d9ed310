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
