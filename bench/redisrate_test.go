package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/contrib/redisstore"
)

// BenchmarkFleetRateRedis compares a per-tenant rate held fleet-wide in
// one local Redis (RESLIMIT_REDIS_ADDR): reslimit's (an evaluation,
// Begin+End, of a tenant of a ledger on the Redis store; its tokens are
// leased in batches by the ledger's syncer) and go-redis/redis_rate's
// GCRA (Allow: one script call, a round trip, per request). The rates
// never refuse (10⁹ a second): what is measured is what the rate costs a
// request.
func BenchmarkFleetRateRedis(b *testing.B) {
	addr := os.Getenv("RESLIMIT_REDIS_ADDR")
	if addr == "" {
		b.Skip("RESLIMIT_REDIS_ADDR is not set")
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	b.Cleanup(func() { _ = rdb.Close() })
	var k [8]byte
	_, _ = rand.Read(k[:])
	prefix := "reslimit-bench-" + hex.EncodeToString(k[:])
	b.Cleanup(func() {
		ctx := context.Background()
		iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			rdb.Del(ctx, iter.Val())
		}
	})

	b.Run("reslimit-fleet-wide", func(b *testing.B) {
		st, err := redisstore.New(rdb, redisstore.WithKeyPrefix(prefix))
		if err != nil {
			b.Fatal(err)
		}
		l, err := reslimit.NewLedger(reslimit.AccountLimits{EvaluationsPerSecond: 1e9},
			reslimit.WithStore(st), reslimit.WithReplica("bench"), reslimit.WithSyncInterval(100*time.Millisecond))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = l.Close(context.Background()) })
		acct := l.Account("tenant")
		b.ReportAllocs()
		for b.Loop() {
			tr, err := acct.Begin(reslimit.Limits{})
			if err != nil {
				b.Fatal(err)
			}
			tr.End()
		}
	})
	b.Run("redis_rate-Allow", func(b *testing.B) {
		lim := redis_rate.NewLimiter(rdb)
		limit := redis_rate.Limit{Rate: 1_000_000_000, Burst: 1_000_000_000, Period: time.Second}
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			res, err := lim.Allow(ctx, prefix+":tenant", limit)
			if err != nil {
				b.Fatal(err)
			}
			if res.Allowed == 0 {
				b.Fatal("refused")
			}
		}
	})
}
