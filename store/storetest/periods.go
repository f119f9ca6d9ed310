package storetest

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit/store"
)

// periodStore returns a store that keeps billing periods, or skips.
func (s *suite) periodStore(t *testing.T) (store.Store, store.PeriodLoader) {
	t.Helper()
	st := s.store(t)
	pl, ok := st.(store.PeriodLoader)
	if !ok {
		t.Skipf("%T keeps no billing periods", st)
	}
	return st, pl
}

func loadPeriod(t *testing.T, pl store.PeriodLoader, tenant string, n uint64) store.Period {
	t.Helper()
	sp, err := pl.LoadPeriod(context.Background(), tenant, n)
	require.NoError(t, err)
	return sp
}

// testPeriodClose: a report for period 2 closes period 1 fleet-wide; the
// committed totals and the quota start over; a replica that has not
// learnt of the close reports to period 1, is granted nothing and told of
// period 2; period 1 is final once both replicas sent their final reports.
func (s *suite) testPeriodClose(t *testing.T) {
	st, pl := s.periodStore(t)
	lim := leased(100, 0, 0, 0)
	a := one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 1, Used: ops(10), Want: ops(40), Limit: lim})
	assert.Equal(t, uint64(1), a.Period)
	assert.Equal(t, ops(50), leasedOf(a.Allowance))
	b := one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 1, Used: ops(5), Want: ops(100), Limit: lim})
	assert.Equal(t, ops(5+45), leasedOf(b.Allowance), "b's grant: 100 - 15 committed - 40 a holds")
	assert.Equal(t, ops(15), b.Committed)
	sp := loadPeriod(t, pl, "t", 1)
	assert.Equal(t, store.Period{Tenant: "t", Number: 1, Open: 1, Totals: ops(15)}, sp)

	// a closes period 1 (it used 20 more in it) and reports 3 in period 2.
	a = one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 2, Period: 2, Used: ops(3), Want: ops(200), Limit: lim,
		Closed: []store.ClosedReport{{Period: 1, Used: ops(20)}}})
	assert.Equal(t, uint64(2), a.Period)
	assert.Equal(t, ops(3), a.Committed, "the committed totals start over")
	assert.Equal(t, ops(33), a.Reported, "reported counts every period")
	assert.Equal(t, ops(33+97), leasedOf(a.Allowance), "the quota starts over: b's lease of period 1 does not count")
	assert.Equal(t, ops(3), load(t, st, "t"))
	sp = loadPeriod(t, pl, "t", 1)
	assert.Equal(t, store.Period{Tenant: "t", Number: 1, Open: 2, Totals: ops(35)}, sp, "b still holds a lease for period 1")
	assert.Equal(t, store.Period{Tenant: "t", Number: 2, Open: 2, Totals: ops(3)}, loadPeriod(t, pl, "t", 2))
	assert.Equal(t, store.Period{Tenant: "t", Number: 2, Open: 2, Totals: ops(3)}, loadPeriod(t, pl, "t", 0))

	// b has not learnt of the close: its report is billed to period 1,
	// and it is granted nothing.
	b = one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 2, Period: 1, Used: ops(7), Want: ops(100), Limit: lim})
	assert.Equal(t, uint64(2), b.Period)
	assert.Equal(t, ops(3), b.Committed)
	assert.Equal(t, ops(12), b.Reported)
	assert.Equal(t, ops(50), leasedOf(b.Allowance), "its period-1 lease, nothing more")
	assert.Equal(t, ops(42), loadPeriod(t, pl, "t", 1).Totals)
	assert.False(t, loadPeriod(t, pl, "t", 1).Final)

	// b closes period 1 too: it is final.
	b = one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 3, Period: 2, Used: ops(1), Want: ops(100), Limit: lim,
		Closed: []store.ClosedReport{{Period: 1, Used: ops(8)}}})
	assert.Equal(t, ops(4), b.Committed)
	assert.Equal(t, ops(21), b.Reported)
	assert.Equal(t, ops(21), leasedOf(b.Allowance), "period 2's quota is taken: 4 committed, 97 leased to a")
	a = one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 3, Period: 2, Return: ops(50), Limit: lim})
	b = one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 4, Period: 2, Want: ops(100), Limit: lim})
	assert.Equal(t, ops(21+49), leasedOf(b.Allowance), "100 - 4 committed - 47 leased to a")
	assert.Equal(t, store.Period{Tenant: "t", Number: 1, Open: 2, Totals: ops(50), Final: true}, loadPeriod(t, pl, "t", 1))
	assert.False(t, loadPeriod(t, pl, "t", 2).Final, "the open period is never final")

	// A replica that gives its lease back with Final lets a period be
	// final as soon as it closes.
	one(t, st, "a", long, true, store.TenantSync{Tenant: "u", Seq: 1, Used: ops(2), Want: ops(10), Limit: lim})
	one(t, st, "b", long, false, store.TenantSync{Tenant: "u", Seq: 1, Period: 2, Closed: []store.ClosedReport{{Period: 1, Used: ops(1)}}})
	assert.Equal(t, store.Period{Tenant: "u", Number: 1, Open: 2, Totals: ops(3), Final: true}, loadPeriod(t, pl, "u", 1))
	// Periods skipped, and tenants never seen, are final and empty.
	one(t, st, "b", long, false, store.TenantSync{Tenant: "u", Seq: 2, Period: 5})
	assert.Equal(t, store.Period{Tenant: "u", Number: 3, Open: 5, Final: true}, loadPeriod(t, pl, "u", 3))
	assert.Equal(t, store.Period{Tenant: "none", Number: 1, Open: 1}, loadPeriod(t, pl, "none", 1))
	assert.Equal(t, store.Period{Tenant: "none", Number: 7, Open: 1}, loadPeriod(t, pl, "none", 7))
}

// testPeriodFinalByExpiry: a closed period whose last lease expired is
// final, although that replica never sent its final report.
func (s *suite) testPeriodFinalByExpiry(t *testing.T) {
	st, pl := s.periodStore(t)
	ttl := s.cfg.LeaseTTL
	one(t, st, "a", ttl, false, store.TenantSync{Tenant: "t", Seq: 1, Used: ops(4)})
	one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 1, Period: 2, Used: ops(1)})
	assert.False(t, loadPeriod(t, pl, "t", 1).Final)
	if s.cfg.Advance != nil {
		s.advance(t, ttl+time.Millisecond)
	} else {
		time.Sleep(ttl + 50*time.Millisecond)
	}
	assert.Equal(t, store.Period{Tenant: "t", Number: 1, Open: 2, Totals: ops(4), Final: true}, loadPeriod(t, pl, "t", 1))
}

// testPeriodRetryAppliesOnce: a retried report with closed periods
// changes nothing.
func (s *suite) testPeriodRetryAppliesOnce(t *testing.T) {
	st, pl := s.periodStore(t)
	one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 1, Used: ops(4)})
	ts := store.TenantSync{Tenant: "t", Seq: 2, Period: 3, Used: ops(2), Closed: []store.ClosedReport{{Period: 1, Used: ops(5)}, {Period: 2, Used: ops(6)}}}
	first := one(t, st, "a", long, false, ts)
	again := one(t, st, "a", long, false, ts)
	assert.Equal(t, first, again)
	assert.Equal(t, ops(17), again.Reported)
	assert.Equal(t, uint64(3), again.Period)
	assert.Equal(t, store.Period{Tenant: "t", Number: 1, Open: 3, Totals: ops(9), Final: true}, loadPeriod(t, pl, "t", 1))
	assert.Equal(t, store.Period{Tenant: "t", Number: 2, Open: 3, Totals: ops(6), Final: true}, loadPeriod(t, pl, "t", 2))
	assert.Equal(t, ops(2), load(t, st, "t"))
}

// testPeriodInvalid: a closed period not before the report's period, or
// twice, is refused and nothing is applied.
func (s *suite) testPeriodInvalid(t *testing.T) {
	st, _ := s.periodStore(t)
	for _, ts := range []store.TenantSync{
		{Tenant: "t", Seq: 1, Period: 2, Closed: []store.ClosedReport{{Period: 2}}},
		{Tenant: "t", Seq: 1, Closed: []store.ClosedReport{{Period: 1}}},
		{Tenant: "t", Seq: 1, Period: 3, Closed: []store.ClosedReport{{Period: 0}}},
		{Tenant: "t", Seq: 1, Period: 3, Closed: []store.ClosedReport{{Period: 1}, {Period: 1}}},
		{Tenant: "t", Seq: 1, Period: 2, LostBefore: 3},
	} {
		_, err := st.Sync(context.Background(), store.SyncRequest{Replica: "a", Tenants: []store.TenantSync{
			{Tenant: "ok", Seq: 1, Used: ops(1)}, ts}})
		require.Error(t, err, "%+v", ts)
		assert.True(t, errors.Is(err, store.ErrInvalidArgument), "%v", err)
	}
	assert.Zero(t, load(t, st, "ok"), "nothing applied")
}

// testPeriodLost: a report that says the store lost reports of periods
// before n marks them lost: never final, whatever their leases; the open
// period and later ones are not; a smaller LostBefore later changes
// nothing, and a stale report's is ignored.
func (s *suite) testPeriodLost(t *testing.T) {
	st, pl := s.periodStore(t)
	one(t, st, "a", long, true, store.TenantSync{Tenant: "t", Seq: 1, Period: 3, Used: ops(4), LostBefore: 3})
	for n := uint64(1); n <= 2; n++ {
		assert.Equal(t, store.Period{Tenant: "t", Number: n, Open: 3, Lost: true}, loadPeriod(t, pl, "t", n))
	}
	assert.Equal(t, store.Period{Tenant: "t", Number: 3, Open: 3, Totals: ops(4)}, loadPeriod(t, pl, "t", 3))
	one(t, st, "a", long, true, store.TenantSync{Tenant: "t", Seq: 2, Period: 4, LostBefore: 2,
		Closed: []store.ClosedReport{{Period: 3, Used: ops(1)}}})
	assert.True(t, loadPeriod(t, pl, "t", 2).Lost)
	assert.Equal(t, store.Period{Tenant: "t", Number: 3, Open: 4, Totals: ops(5), Final: true}, loadPeriod(t, pl, "t", 3))
	one(t, st, "a", long, true, store.TenantSync{Tenant: "t", Seq: 1, Period: 4, LostBefore: 4})
	assert.False(t, loadPeriod(t, pl, "t", 3).Lost, "a stale report changes nothing")
}

// testPeriodsMatchMemoryStore replays random syncs of replicas that move
// from period to period at their own pace (late reports, final reports,
// retries, Final syncs, leases that expire) on the store and on a
// MemoryStore, and requires the same answers and the same period totals.
func (s *suite) testPeriodsMatchMemoryStore(t *testing.T) {
	st, pl := s.periodStore(t)
	ref := store.NewMemory()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(3, 5))
	replicas := []string{"a", "b", "c"}
	tenants := []string{"t1", "t2"}
	lim := leased(1000, 100, 0, 30)
	type key struct{ replica, tenant string }
	seqs := map[key]uint64{}
	period := map[key]uint64{}
	last := map[key]store.TenantSync{}
	rv := func(n int64) int64 { return rng.Int64N(n) }
	maxPeriod := uint64(1)
	for step := range 300 {
		replica := replicas[rng.IntN(len(replicas))]
		req := store.SyncRequest{Replica: replica, LeaseTTL: long, Final: rng.IntN(15) == 0}
		if rng.IntN(8) == 0 {
			req.LeaseTTL = 0
		}
		for _, tn := range tenants {
			if rng.IntN(2) == 0 {
				continue
			}
			k := key{replica, tn}
			if seqs[k] > 0 && rng.IntN(15) == 0 {
				req.Tenants = append(req.Tenants, last[k]) // a retry
				continue
			}
			seqs[k]++
			p := max(period[k], 1)
			ts := store.TenantSync{Tenant: tn, Seq: seqs[k], Limit: lim, Period: p,
				Used: store.Totals{Operations: rv(60), Calls: rv(5), Evaluations: rv(3), CPUTime: time.Duration(rv(1e6)) * time.Microsecond},
				Want: leased(rv(300), rv(30), 0, rv(10)), Return: ops(rv(20))}
			if rng.IntN(6) == 0 { // the replica closes its period (or more)
				for range 1 + rng.IntN(2) {
					ts.Closed = append(ts.Closed, store.ClosedReport{Period: p, Used: ops(rv(40))})
					p++
				}
				ts.Period = p
			}
			period[k] = ts.Period
			last[k] = ts
			req.Tenants = append(req.Tenants, ts)
		}
		if len(req.Tenants) == 0 {
			continue
		}
		wantResp, err := ref.Sync(ctx, req)
		require.NoError(t, err)
		gotResp, err := st.Sync(ctx, req)
		require.NoError(t, err, "step %d", step)
		require.Equal(t, wantResp, gotResp, "step %d: %+v", step, req)
		for i, ts := range req.Tenants {
			// A replica learns of a later period from the answer.
			k := key{replica, ts.Tenant}
			maxPeriod = max(maxPeriod, gotResp.Tenants[i].Period)
			if p := gotResp.Tenants[i].Period; p > period[k] && rng.IntN(2) == 0 {
				period[k] = p // closes its own at its next report
			}
		}
		if req.LeaseTTL == 0 {
			time.Sleep(2 * time.Millisecond)
			s.advance(t, 2*time.Millisecond)
		}
		if step%25 == 0 {
			for _, tn := range tenants {
				for n := uint64(1); n <= maxPeriod+1; n++ {
					w, err := ref.LoadPeriod(ctx, tn, n)
					require.NoError(t, err)
					require.Equal(t, w, loadPeriod(t, pl, tn, n), "step %d: LoadPeriod(%s, %d)", step, tn, n)
				}
			}
		}
	}
}
