package storetest

import (
	"context"
	"errors"
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
		time.Sleep(ttl + 50*time.Millisecond) // a store on the real clock: its lease expires only in real time
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
	m := &periodReplay{
		replay:    newReplay(3, 5),
		replicas:  []string{"a", "b", "c"},
		tenants:   []string{"t1", "t2"},
		lim:       leased(1000, 100, 0, 30),
		period:    map[replayKey]uint64{},
		maxPeriod: 1,
	}
	for step := range 300 {
		req := m.request()
		if len(req.Tenants) == 0 {
			continue
		}
		resp := m.syncBoth(t, st, step, req)
		m.learn(req, resp)
		if req.LeaseTTL == 0 {
			m.expire(t, s)
		}
		if step%25 == 0 {
			m.comparePeriods(t, pl, step)
		}
	}
}

// periodReplay is the replay of PeriodsMatchMemoryStore: each replica
// reports to the period it is in (period), and the highest period any
// answer named is maxPeriod.
type periodReplay struct {
	*replay
	replicas, tenants []string
	lim               store.Totals
	period            map[replayKey]uint64
	maxPeriod         uint64
}

// request makes the next random request: one replica's sync of some of
// the tenants (maybe none), each a retry or a new report, sometimes Final,
// sometimes with a lease of 0.
func (m *periodReplay) request() store.SyncRequest {
	replica := m.replicaOf(m.replicas)
	req := store.SyncRequest{Replica: replica, LeaseTTL: long, Final: m.rng.IntN(15) == 0}
	if m.rng.IntN(8) == 0 {
		req.LeaseTTL = 0
	}
	for _, tn := range m.tenants {
		if m.rng.IntN(2) == 0 {
			continue
		}
		k := replayKey{replica, tn}
		if m.seqs[k] > 0 && m.rng.IntN(15) == 0 {
			req.Tenants = append(req.Tenants, m.last[k]) // a retry
			continue
		}
		ts := m.report(k)
		m.period[k] = ts.Period
		m.last[k] = ts
		req.Tenants = append(req.Tenants, ts)
	}
	return req
}

// report is k's next report, to its period; now and then the replica
// closes that period (or more) in it.
func (m *periodReplay) report(k replayKey) store.TenantSync {
	m.seqs[k]++
	p := max(m.period[k], 1)
	ts := store.TenantSync{Tenant: k.tenant, Seq: m.seqs[k], Limit: m.lim, Period: p,
		Used: store.Totals{Operations: m.rv(60), Calls: m.rv(5), Evaluations: m.rv(3), CPUTime: time.Duration(m.rv(1e6)) * time.Microsecond},
		Want: leased(m.rv(300), m.rv(30), 0, m.rv(10)), Return: ops(m.rv(20))}
	if m.rng.IntN(6) == 0 {
		for range 1 + m.rng.IntN(2) {
			ts.Closed = append(ts.Closed, store.ClosedReport{Period: p, Used: ops(m.rv(40))})
			p++
		}
		ts.Period = p
	}
	return ts
}

// learn takes in an answer: a replica that learns of a later period moves
// to it half the time (it closes its own at its next report).
func (m *periodReplay) learn(req store.SyncRequest, resp store.SyncResponse) {
	for i, ts := range req.Tenants {
		k := replayKey{req.Replica, ts.Tenant}
		m.maxPeriod = max(m.maxPeriod, resp.Tenants[i].Period)
		if p := resp.Tenants[i].Period; p > m.period[k] && m.rng.IntN(2) == 0 {
			m.period[k] = p
		}
	}
}

// comparePeriods requires the same periods of every tenant, up to one
// past the highest known, from pl as from the reference.
func (m *periodReplay) comparePeriods(t *testing.T, pl store.PeriodLoader, step int) {
	t.Helper()
	for _, tn := range m.tenants {
		for n := uint64(1); n <= m.maxPeriod+1; n++ {
			w, err := m.ref.LoadPeriod(context.Background(), tn, n)
			require.NoError(t, err)
			require.Equal(t, w, loadPeriod(t, pl, tn, n), "step %d: LoadPeriod(%s, %d)", step, tn, n)
		}
	}
}
