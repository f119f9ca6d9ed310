package redisstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/contrib/redisstore"
	"github.com/reslimit/reslimit/store"
)

// TestPeriodLayoutAndRetention checks the keys of a closed period on a
// real Redis: the open period stays at the tenant's keys (which never
// expire), the closed one moves to prefix:{t}:p1 and :p1:leases, which
// expire the retention after the period is final (at the latest lease
// while a replica still holds one).
func TestPeriodLayoutAndRetention(t *testing.T) {
	rdb := client(t)
	const retention = time.Hour
	st, prefix := newStore(t, rdb, redisstore.WithPeriodRetention(retention))
	ctx := context.Background()
	syncOne(t, st, "a", store.TenantSync{Tenant: "acme", Seq: 1, Used: store.Totals{Operations: 3},
		Want: store.Totals{Operations: 10}, Limit: store.Totals{Operations: 100}})
	b := syncOne(t, st, "b", store.TenantSync{Tenant: "acme", Seq: 1, Period: 2, Used: store.Totals{Operations: 4}})
	assert.Equal(t, uint64(2), b.Period)
	hash, leases := st.Keys("acme")
	p1, p1leases := prefix+":{acme}:p1", prefix+":{acme}:p1:leases"

	got, err := rdb.HGetAll(ctx, p1).Result()
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"ops": "3"}, got, "period 1's committed totals")
	open, err := rdb.HMGet(ctx, hash, "period", "ops", "out_ops").Result()
	require.NoError(t, err)
	assert.Equal(t, []any{"2", "4", nil}, open, "period 2 starts over; a's lease of period 1 is not in out_ops")
	members, err := rdb.ZRange(ctx, p1leases, 0, -1).Result()
	require.NoError(t, err)
	assert.Equal(t, []string{"a"}, members)
	members, err = rdb.ZRange(ctx, leases, 0, -1).Result()
	require.NoError(t, err)
	assert.Equal(t, []string{"b"}, members)

	for _, k := range []string{hash, leases} {
		ttl, err := rdb.PTTL(ctx, k).Result()
		require.NoError(t, err)
		assert.Equal(t, time.Duration(-1), ttl, "%s: the open period has no TTL", k)
	}
	for _, k := range []string{p1, p1leases} {
		ttl, err := rdb.PTTL(ctx, k).Result()
		require.NoError(t, err)
		assert.InDelta(t, float64(time.Minute+retention), float64(ttl), float64(5*time.Second), "%s: a's lease (1 minute), then the retention", k)
	}
	sp, err := st.LoadPeriod(ctx, "acme", 1)
	require.NoError(t, err)
	assert.Equal(t, store.Period{Tenant: "acme", Number: 1, Open: 2, Totals: store.Totals{Operations: 3}}, sp)

	// a's final report for period 1: it is final, and expires after the
	// retention.
	a := syncOne(t, st, "a", store.TenantSync{Tenant: "acme", Seq: 2, Period: 2,
		Closed: []store.ClosedReport{{Period: 1, Used: store.Totals{Operations: 5}}}})
	assert.Equal(t, store.Totals{Operations: 4}, a.Committed)
	sp, err = st.LoadPeriod(ctx, "acme", 1)
	require.NoError(t, err)
	assert.Equal(t, store.Period{Tenant: "acme", Number: 1, Open: 2, Totals: store.Totals{Operations: 8}, Final: true}, sp)
	ttl, err := rdb.PTTL(ctx, p1).Result()
	require.NoError(t, err)
	assert.InDelta(t, float64(retention), float64(ttl), float64(5*time.Second))
	n, err := rdb.Exists(ctx, p1leases).Result()
	require.NoError(t, err)
	assert.Zero(t, n, "no lease left for period 1")

	// Without a retention, closed periods are kept.
	st2, prefix2 := newStore(t, rdb)
	syncOne(t, st2, "a", store.TenantSync{Tenant: "acme", Seq: 1, Used: store.Totals{Operations: 3}})
	syncOne(t, st2, "a", store.TenantSync{Tenant: "acme", Seq: 2, Period: 2, Closed: []store.ClosedReport{{Period: 1}}})
	ttl, err = rdb.PTTL(ctx, prefix2+":{acme}:p1").Result()
	require.NoError(t, err)
	assert.Equal(t, time.Duration(-1), ttl)

	_, err = redisstore.New(rdb, redisstore.WithPeriodRetention(-time.Second))
	assert.ErrorIs(t, err, reslimit.ErrInvalidArgument)
}

func chargeOps(t *testing.T, a *reslimit.Account, n int64) {
	t.Helper()
	tr, err := a.Begin(reslimit.Limits{})
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(n))
	tr.End()
}

// TestFleetPeriods runs two ledgers on a real Redis: r1 closes period 1
// while r2 holds usage charged in it; r2 learns of the close from the
// store and closes its own; every unit is billed to the period it was
// charged in, period 1 is final once both sent their final reports, its
// keys expire after the retention, and the quota starts over.
func TestFleetPeriods(t *testing.T) {
	rdb := client(t)
	st, prefix := newStore(t, rdb, redisstore.WithPeriodRetention(time.Hour))
	ctx := context.Background()
	lim := reslimit.AccountLimits{MaxTotalOperations: 100}
	r1 := replica(t, st, "r1", lim)
	r2 := replica(t, st, "r2", lim)
	chargeOps(t, r1.Account("acme"), 60)
	chargeOps(t, r2.Account("acme"), 30)
	require.NoError(t, r1.Sync(ctx))

	lines := r1.ClosePeriod()
	require.Len(t, lines, 1)
	assert.Equal(t, int64(60), lines[0].Operations)
	require.NoError(t, r1.Sync(ctx))
	require.NoError(t, r2.Sync(ctx))
	require.NoError(t, r2.Sync(ctx))
	assert.Equal(t, uint64(2), r2.Account("acme").Stats().Period)
	kept := r2.Periods()
	require.Len(t, kept, 1)
	assert.Equal(t, uint64(1), kept[0].Number)
	assert.Equal(t, int64(30), kept[0].Operations)
	sp, err := st.LoadPeriod(ctx, "acme", 1)
	require.NoError(t, err)
	sp.CPUTime = 0
	assert.Equal(t, store.Period{Tenant: "acme", Number: 1, Open: 2,
		Totals: store.Totals{Operations: 90, Evaluations: 2}, Final: true}, sp)
	ttl, err := rdb.PTTL(ctx, prefix+":{acme}:p1").Result()
	require.NoError(t, err)
	assert.InDelta(t, float64(time.Hour), float64(ttl), float64(time.Minute))

	chargeOps(t, r1.Account("acme"), 60) // 90 + 60 > 100: the quota started over
	require.NoError(t, r1.Sync(ctx))
	sp, err = st.LoadPeriod(ctx, "acme", 0)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), sp.Number)
	assert.Equal(t, int64(60), sp.Operations)
}

// deleteKeys deletes every key under prefix: what a Redis restarted
// without its data has lost (only this test's keys, so that tests sharing
// the server do not see it).
func deleteKeys(t *testing.T, rdb *redis.Client, prefix string) {
	t.Helper()
	ctx := context.Background()
	iter := rdb.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	require.NoError(t, iter.Err())
	require.NotEmpty(t, keys)
	require.NoError(t, rdb.Del(ctx, keys...).Err())
}

// Redis loses its data after a period closed (issue 19.5): the replicas
// report again what they had reported for the open period, and only that;
// the closed period reads as lost, never final; the open period's quota
// starts from what was charged in it.
func TestFleetPeriodsStoreLostAfterAClose(t *testing.T) {
	rdb := client(t)
	st, prefix := newStore(t, rdb)
	ctx := context.Background()
	lim := reslimit.AccountLimits{MaxTotalOperations: 1000}
	r1 := replica(t, st, "r1", lim)
	r2 := replica(t, st, "r2", lim)
	syncAll := func() {
		for range 3 {
			require.NoError(t, r1.Sync(ctx))
			require.NoError(t, r2.Sync(ctx))
		}
	}
	chargeOps(t, r1.Account("beta"), 300)
	chargeOps(t, r2.Account("beta"), 200)
	syncAll()
	require.Len(t, r1.ClosePeriod(), 1)
	syncAll()
	chargeOps(t, r1.Account("beta"), 50)
	chargeOps(t, r2.Account("beta"), 40)
	syncAll()
	sp, err := st.LoadPeriod(ctx, "beta", 1)
	require.NoError(t, err)
	require.True(t, sp.Final)
	require.Equal(t, int64(500), sp.Operations)

	deleteKeys(t, rdb, prefix)
	syncAll()

	open, err := st.LoadPeriod(ctx, "beta", 0)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), open.Number)
	assert.Equal(t, int64(90), open.Operations, "the open period holds what was charged in it, no more")
	closed, err := st.LoadPeriod(ctx, "beta", 1)
	require.NoError(t, err)
	assert.True(t, closed.Lost, "the closed period lost its reports")
	assert.False(t, closed.Final, "a period that lost reports is never final")

	// 910 more fit in the open period, fleet-wide.
	var granted int64
	for _, l := range []*reslimit.Ledger{r1, r2, r1, r2} {
		tr, err := l.Account("beta").Begin(reslimit.Limits{})
		if err != nil {
			continue
		}
		for tr.TrackOperation() == nil {
			granted++
		}
		tr.End()
	}
	syncAll()
	open, err = st.LoadPeriod(ctx, "beta", 0)
	require.NoError(t, err)
	assert.Equal(t, int64(1000), open.Operations)
	assert.Equal(t, int64(910), granted)
}
