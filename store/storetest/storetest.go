// Package storetest is the conformance suite for store.Store
// implementations: it checks that a store behaves exactly like
// store.Memory, the reference implementation, against the rules
// of the Store contract:
//
//   - a report is applied at most once per (Replica, Tenant, Seq); a retry or
//     a stale Seq changes nothing and returns the same state;
//   - grants go up to Want while the tenant's committed totals plus every
//     replica's unused allowance stay within the limit, across replicas;
//   - a replica's allowance never falls below what it reported;
//   - unused allowance of a replica whose lease expired is never reclaimed:
//     only Return and Final give allowance back; a grant below MinGrant is
//     not made;
//   - a Final sync gives back every unused allowance;
//   - resources without a limit (0) are only reported; CPU time is leased
//     like the others (in whole microseconds at CPUResolution);
//   - CPU time round-trips (within Config.CPUResolution per report);
//   - Load returns the committed totals; a TenantLister lists every tenant;
//   - billing periods (for a store that implements store.PeriodLoader):
//     a report for a later period closes the open one, and the committed
//     totals and quotas start over; a late report is billed to its period;
//     a closed period is final once every lease for it was given back by a
//     final report (ClosedReport, Final) or expired; a report's LostBefore
//     marks the periods before it lost, never final.
//
// A store package runs it from a test:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, storetest.Config{
//			New: func(t *testing.T) store.Store { return newIsolatedStore(t) },
//		})
//	}
package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit/store"
)

// Config tells Run how to make and age the stores under test.
type Config struct {
	// New returns an empty store, isolated from every other store it
	// returned (a Redis store, for example, on its own key prefix). It is
	// called once per subtest, possibly from parallel subtests, and should
	// register its own cleanup with t.Cleanup. Required.
	New func(t *testing.T) store.Store

	// LeaseTTL is the short lease the expiry subtest grants before it lets
	// it pass (with Advance, or by sleeping LeaseTTL+50ms on the real
	// clock) and checks that nothing was reclaimed. 0 means 200ms.
	LeaseTTL time.Duration

	// Advance, if set, moves the store's clock forward by at least d (for a
	// store with a fake clock, such as a miniredis server). The expiry
	// subtests call it before they poll, so they need not wait in real
	// time. Nil means the store runs on the real clock.
	Advance func(t *testing.T, d time.Duration)

	// CPUResolution is the granularity at which the store keeps CPU time:
	// each report's CPUTime may be committed (and reported back) short by
	// less than CPUResolution, never more, and never above what was sent.
	// 0 means CPU time is kept exactly. A store that keeps whole
	// microseconds sets time.Microsecond; reports of whole microseconds
	// must round-trip exactly either way.
	CPUResolution time.Duration
}

// Run runs the whole suite against the stores cfg.New makes, each check
// in a parallel subtest of t.
func Run(t *testing.T, cfg Config) {
	t.Helper()
	if cfg.New == nil {
		t.Fatal("storetest: Config.New is nil")
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 200 * time.Millisecond
	}
	s := &suite{cfg: cfg}
	for _, tc := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"InvalidArgument", s.testInvalidArgument},
		{"CanceledContext", s.testCanceledContext},
		{"EmptyRequest", s.testEmptyRequest},
		{"ReportAndLoad", s.testReportAndLoad},
		{"ResponseOrder", s.testResponseOrder},
		{"RetrySameSeq", s.testRetrySameSeq},
		{"StaleSeq", s.testStaleSeq},
		{"LargeSeq", s.testLargeSeq},
		{"GrantWithinLimit", s.testGrantWithinLimit},
		{"OverspendLiftsAllowance", s.testOverspendLiftsAllowance},
		{"LimitLowered", s.testLimitLowered},
		{"Unlimited", s.testUnlimited},
		{"CPUTimeLeased", s.testCPUTimeLeased},
		{"CPUTimeRoundTrip", s.testCPUTimeRoundTrip},
		{"CPUTimeSubMicrosecond", s.testCPUTimeSubMicrosecond},
		{"FinalGivesBack", s.testFinalGivesBack},
		{"FinalOnRetry", s.testFinalOnRetry},
		{"ExpiredLeaseStaysCounted", s.testExpiredLeaseStaysCounted},
		{"ReturnAndMinGrant", s.testReturnAndMinGrant},
		{"ListTenants", s.testListTenants},
		{"Hammer", s.testHammer},
		{"MatchesMemoryStore", s.testMatchesMemoryStore},
		{"PeriodClose", s.testPeriodClose},
		{"PeriodFinalByExpiry", s.testPeriodFinalByExpiry},
		{"PeriodRetryAppliesOnce", s.testPeriodRetryAppliesOnce},
		{"PeriodInvalid", s.testPeriodInvalid},
		{"PeriodLost", s.testPeriodLost},
		{"PeriodsMatchMemoryStore", s.testPeriodsMatchMemoryStore},
		{"RateTakeAndReturn", s.testRateTakeAndReturn},
		{"RateRefills", s.testRateRefills},
		{"RateInvalid", s.testRateInvalid},
		{"RateHammer", s.testRateHammer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.f(t)
		})
	}
}

type suite struct{ cfg Config }

// long is a lease that does not expire during a test.
const long = time.Hour

// leased builds Totals of the leased resources (CPUTime 0).
func leased(ops, calls, mem, evals int64) store.Totals {
	return store.Totals{Operations: ops, Calls: calls, TotalMemory: mem, Evaluations: evals}
}

// ops builds Totals with only Operations set.
func ops(n int64) store.Totals { return store.Totals{Operations: n} }

// leasedOf returns t without CPUTime: the part of an Allowance the tests
// that do not lease CPU time check (CPUTimeLeased checks it).
func leasedOf(t store.Totals) store.Totals {
	t.CPUTime = 0
	return t
}

func (s *suite) store(t *testing.T) store.Store {
	t.Helper()
	st := s.cfg.New(t)
	require.NotNil(t, st, "Config.New returned nil")
	return st
}

// sync runs one request and checks the shape of the answer.
func syncReq(t *testing.T, st store.Store, req store.SyncRequest) []store.TenantState {
	t.Helper()
	resp, err := st.Sync(context.Background(), req)
	require.NoError(t, err)
	require.Len(t, resp.Tenants, len(req.Tenants))
	for i, ts := range req.Tenants {
		require.Equal(t, ts.Tenant, resp.Tenants[i].Tenant, "answer %d is for another tenant", i)
	}
	return resp.Tenants
}

// one syncs a single tenant for replica and returns its state.
func one(t *testing.T, st store.Store, replica string, ttl time.Duration, final bool, ts store.TenantSync) store.TenantState {
	t.Helper()
	return syncReq(t, st, store.SyncRequest{Replica: replica, LeaseTTL: ttl, Final: final,
		Tenants: []store.TenantSync{ts}})[0]
}

func load(t *testing.T, st store.Store, tenant string) store.Totals {
	t.Helper()
	tot, err := st.Load(context.Background(), tenant)
	require.NoError(t, err)
	return tot
}

// advance ages the store's clock past d if it has a fake one.
func (s *suite) advance(t *testing.T, d time.Duration) {
	if s.cfg.Advance != nil {
		s.cfg.Advance(t, d)
	}
}

func (s *suite) testInvalidArgument(t *testing.T) {
	st := s.store(t)
	_, err := st.Sync(context.Background(), store.SyncRequest{LeaseTTL: long,
		Tenants: []store.TenantSync{{Tenant: "t", Seq: 1, Used: ops(1)}}})
	require.ErrorIs(t, err, store.ErrInvalidArgument, "a sync without a replica id")
	assert.Zero(t, load(t, st, "t"), "a refused sync must not be applied")
}

func (s *suite) testCanceledContext(t *testing.T) {
	st := s.store(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := st.Sync(ctx, store.SyncRequest{Replica: "r", LeaseTTL: long,
		Tenants: []store.TenantSync{{Tenant: "t", Seq: 1, Used: ops(1)}}})
	require.Error(t, err)
	require.True(t, errors.Is(err, context.Canceled), "got %v", err)
}

func (s *suite) testEmptyRequest(t *testing.T) {
	st := s.store(t)
	resp, err := st.Sync(context.Background(), store.SyncRequest{Replica: "r", LeaseTTL: long})
	require.NoError(t, err)
	assert.Empty(t, resp.Tenants)
	resp, err = st.Sync(context.Background(), store.SyncRequest{Replica: "r", LeaseTTL: long, Final: true})
	require.NoError(t, err)
	assert.Empty(t, resp.Tenants)
}

func (s *suite) testReportAndLoad(t *testing.T) {
	st := s.store(t)
	assert.Zero(t, load(t, st, "nobody"), "an unknown tenant has zero totals")

	ua := store.Totals{Operations: 1, Calls: 2, TotalMemory: 3, CPUTime: 4 * time.Microsecond, Evaluations: 5}
	ub := store.Totals{Operations: 10, Calls: 20, TotalMemory: 30, CPUTime: 40 * time.Millisecond, Evaluations: 50}
	got := syncReq(t, st, store.SyncRequest{Replica: "r1", LeaseTTL: long, Tenants: []store.TenantSync{
		{Tenant: "a", Seq: 1, Used: ua},
		{Tenant: "b", Seq: 1, Used: ub},
	}})
	assert.Equal(t, ua, got[0].Committed)
	assert.Equal(t, ua, got[0].Reported)
	assert.Equal(t, leasedOf(ua), leasedOf(got[0].Allowance), "allowance is lifted to what was reported")
	assert.Equal(t, ub, got[1].Committed)
	assert.Equal(t, ub, got[1].Reported)

	got2 := one(t, st, "r2", long, false, store.TenantSync{Tenant: "a", Seq: 1, Used: ub})
	assert.Equal(t, ua.Add(ub), got2.Committed, "committed totals are fleet-wide")
	assert.Equal(t, ub, got2.Reported, "Reported is this replica's own")

	assert.Equal(t, ua.Add(ub), load(t, st, "a"))
	assert.Equal(t, ub, load(t, st, "b"))
	assert.Zero(t, load(t, st, "nobody"))

	got3 := one(t, st, "r1", long, false, store.TenantSync{Tenant: "a", Seq: 2, Used: ua})
	assert.Equal(t, ua.Add(ua), got3.Reported, "Reported is cumulative")
	assert.Equal(t, ua.Add(ua).Add(ub), got3.Committed)
	assert.Equal(t, got3.Committed, load(t, st, "a"))
}

func (s *suite) testResponseOrder(t *testing.T) {
	st := s.store(t)
	lim := ops(100)
	got := syncReq(t, st, store.SyncRequest{Replica: "r", LeaseTTL: long, Tenants: []store.TenantSync{
		{Tenant: "z", Seq: 1, Used: ops(1)},
		{Tenant: "a", Seq: 1, Used: ops(2), Want: ops(10), Limit: lim},
		{Tenant: "m", Seq: 1, Used: ops(3)},
		// The same tenant again: applied after the first, in order.
		{Tenant: "a", Seq: 2, Used: ops(4), Want: ops(10), Limit: lim},
		// A retry inside the same request changes nothing.
		{Tenant: "a", Seq: 2, Used: ops(4), Want: ops(10), Limit: lim},
	}})
	assert.Equal(t, ops(1), got[0].Committed)
	assert.Equal(t, ops(2), got[1].Committed)
	assert.Equal(t, ops(12), leasedOf(got[1].Allowance))
	assert.Equal(t, ops(3), got[2].Committed)
	assert.Equal(t, ops(6), got[3].Committed)
	assert.Equal(t, ops(6), got[3].Reported)
	assert.Equal(t, ops(22), leasedOf(got[3].Allowance), "6 reported + 6 unused + 10 granted")
	assert.Equal(t, got[3], got[4])
}

func (s *suite) testRetrySameSeq(t *testing.T) {
	st := s.store(t)
	lim := leased(100, 50, 1000, 10)
	ts := store.TenantSync{Tenant: "t", Seq: 1, Used: store.Totals{Operations: 5, TotalMemory: 7, CPUTime: time.Millisecond},
		Want: leased(20, 20, 20, 20), Limit: lim}
	first := one(t, st, "r", long, false, ts)
	assert.Equal(t, leased(25, 20, 27, 10), leasedOf(first.Allowance))
	for range 3 {
		again := one(t, st, "r", long, false, ts)
		assert.Equal(t, first, again, "a retry with the same Seq changes nothing and returns the same state")
	}
	// Even a retry that (against the contract) carries other numbers is
	// ignored: the Seq alone decides.
	odd := ts
	odd.Used = ops(1000)
	odd.Want = leased(1000, 1000, 1000, 1000)
	assert.Equal(t, first, one(t, st, "r", long, false, odd))
	assert.Equal(t, first.Committed, load(t, st, "t"))

	// Another replica's retry is independent of this one's.
	o1 := one(t, st, "other", long, false, store.TenantSync{Tenant: "t", Seq: 1, Used: ops(1), Want: ops(10), Limit: lim})
	o2 := one(t, st, "other", long, false, store.TenantSync{Tenant: "t", Seq: 1, Used: ops(1), Want: ops(10), Limit: lim})
	assert.Equal(t, o1, o2)
	assert.Equal(t, first.Committed.Add(ops(1)), o2.Committed)
	// The first replica's retry now sees the new committed totals but its
	// own state is unchanged.
	again := one(t, st, "r", long, false, ts)
	assert.Equal(t, first.Reported, again.Reported)
	assert.Equal(t, first.Allowance, again.Allowance)
	assert.Equal(t, o2.Committed, again.Committed)
}

func (s *suite) testStaleSeq(t *testing.T) {
	st := s.store(t)
	lim := ops(100)
	one(t, st, "r", long, false, store.TenantSync{Tenant: "t", Seq: 1, Used: ops(1), Want: ops(10), Limit: lim})
	s5 := one(t, st, "r", long, false, store.TenantSync{Tenant: "t", Seq: 5, Used: ops(2), Want: ops(10), Limit: lim})
	assert.Equal(t, ops(3), s5.Reported)
	assert.Equal(t, ops(21), leasedOf(s5.Allowance))
	for _, seq := range []uint64{0, 1, 4, 5} {
		got := one(t, st, "r", long, false, store.TenantSync{Tenant: "t", Seq: seq, Used: ops(50), Want: ops(10), Limit: lim})
		assert.Equal(t, s5, got, "seq %d is not above the last applied 5", seq)
	}
	s6 := one(t, st, "r", long, false, store.TenantSync{Tenant: "t", Seq: 6, Used: ops(1), Limit: lim})
	assert.Equal(t, ops(4), s6.Reported)
	assert.Equal(t, ops(4), load(t, st, "t"))
}

func (s *suite) testLargeSeq(t *testing.T) {
	st := s.store(t)
	// Sequence numbers beyond 2^53 must be compared exactly (no float64).
	seqs := []uint64{1 << 60, 1<<60 + 1, 1<<63 + 7, ^uint64(0) - 1, ^uint64(0)}
	var want int64
	for i, seq := range seqs {
		want += int64(i + 1)
		got := one(t, st, "r", long, false, store.TenantSync{Tenant: "t", Seq: seq, Used: ops(int64(i + 1))})
		require.Equal(t, ops(want), got.Reported, "seq %d", seq)
		stale := one(t, st, "r", long, false, store.TenantSync{Tenant: "t", Seq: seq - 1, Used: ops(100)})
		require.Equal(t, got, stale, "seq %d after %d", seq-1, seq)
	}
	assert.Equal(t, ops(want), load(t, st, "t"))
}

func (s *suite) testGrantWithinLimit(t *testing.T) {
	st := s.store(t)
	lim := leased(100, 0, 1<<20, 0)
	sync := func(r string, seq uint64, final bool, used, want store.Totals) store.TenantState {
		return one(t, st, r, long, final, store.TenantSync{Tenant: "t", Seq: seq, Used: used, Want: want, Limit: lim})
	}
	a := sync("a", 1, false, store.Totals{}, leased(30, 5, 1<<19, 5))
	assert.Equal(t, leased(30, 0, 1<<19, 0), leasedOf(a.Allowance), "grant up to Want; nothing without a limit")
	a = sync("a", 2, false, store.Totals{}, leased(30, 0, 1<<19, 0))
	assert.Equal(t, leased(60, 0, 1<<20, 0), leasedOf(a.Allowance), "grants add up")
	b := sync("b", 1, false, store.Totals{}, leased(50, 0, 1, 0))
	assert.Equal(t, leased(40, 0, 0, 0), leasedOf(b.Allowance), "only what is left under the limit")
	c := sync("c", 1, false, store.Totals{}, leased(10, 0, 10, 0))
	assert.Zero(t, leasedOf(c.Allowance), "nothing is left")

	a = sync("a", 3, false, leased(60, 0, 100, 0), store.Totals{})
	assert.Equal(t, leased(60, 0, 100, 0), a.Reported)
	assert.Equal(t, leased(60, 0, 1<<20, 0), leasedOf(a.Allowance), "using an allowance does not change it")
	assert.Equal(t, leased(60, 0, 100, 0), a.Committed)
	b = sync("b", 2, false, leased(10, 0, 0, 0), store.Totals{})
	assert.Equal(t, leased(40, 0, 0, 0), leasedOf(b.Allowance))
	c = sync("c", 2, false, store.Totals{}, leased(10, 0, 10, 0))
	assert.Zero(t, leasedOf(c.Allowance), "reported usage still counts against the limit")

	b = sync("b", 3, true, leased(20, 0, 0, 0), store.Totals{})
	assert.Equal(t, leased(30, 0, 0, 0), leasedOf(b.Allowance), "Final gives back the unused 10")
	c = sync("c", 3, false, store.Totals{}, leased(100, 0, 10, 0))
	assert.Equal(t, leased(10, 0, 0, 0), leasedOf(c.Allowance), "what b gave back")
	assert.Equal(t, leased(90, 0, 100, 0), load(t, st, "t"))
}

func (s *suite) testOverspendLiftsAllowance(t *testing.T) {
	st := s.store(t)
	lim := ops(100)
	a := one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 1, Want: ops(10), Limit: lim})
	assert.Equal(t, ops(10), leasedOf(a.Allowance))
	// A replica may report more than it was granted (it measured usage
	// after the fact): the store counts it all and lifts the allowance.
	a = one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 2, Used: ops(25), Limit: lim})
	assert.Equal(t, ops(25), a.Reported)
	assert.Equal(t, ops(25), leasedOf(a.Allowance), "the allowance never stays below what was reported")
	assert.Equal(t, ops(25), a.Committed)
	b := one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 1, Want: ops(1000), Limit: lim})
	assert.Equal(t, ops(75), leasedOf(b.Allowance))
	// Overspending in the same sync as a Want: the grant counts the
	// overspend.
	a = one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 3, Used: ops(5), Want: ops(10), Limit: lim})
	assert.Equal(t, ops(30), leasedOf(a.Allowance), "no room left: lifted to reported only")
	assert.Equal(t, ops(30), a.Committed)
}

func (s *suite) testLimitLowered(t *testing.T) {
	st := s.store(t)
	a := one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 1, Used: ops(50), Want: ops(10), Limit: ops(100)})
	assert.Equal(t, ops(60), leasedOf(a.Allowance))
	// The limit drops below what is already committed: no grant, and the
	// allowance already granted stays.
	a = one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 2, Used: ops(1), Want: ops(10), Limit: ops(40)})
	assert.Equal(t, ops(51), a.Reported)
	assert.Equal(t, ops(60), leasedOf(a.Allowance))
	b := one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 1, Want: ops(10), Limit: ops(40)})
	assert.Zero(t, leasedOf(b.Allowance))
	// Raised again: grants resume from committed + outstanding.
	b = one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 2, Want: ops(100), Limit: ops(70)})
	assert.Equal(t, ops(10), leasedOf(b.Allowance))
}

func (s *suite) testUnlimited(t *testing.T) {
	st := s.store(t)
	used := store.Totals{Operations: 1e6, Calls: 1e5, TotalMemory: 1 << 40, CPUTime: time.Hour, Evaluations: 1e4}
	for i := range uint64(3) {
		a := one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: i + 1, Used: used, Want: leased(1, 2, 3, 4)})
		assert.Equal(t, leasedOf(a.Reported), leasedOf(a.Allowance), "no limit: nothing granted, allowance = reported")
	}
	b := one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 1, Used: used, Want: leased(1, 2, 3, 4)})
	assert.Equal(t, leasedOf(used), leasedOf(b.Allowance))
	tot := store.Totals{}
	for range 4 {
		tot = tot.Add(used)
	}
	assert.Equal(t, tot, b.Committed)
	assert.Equal(t, tot, load(t, st, "t"))
}

// testCPUTimeLeased: CPU time is leased like the other quantities (in
// whole microseconds on stores that keep microseconds): granted up to the
// limit fleet-wide, given back with Return and Final.
func (s *suite) testCPUTimeLeased(t *testing.T) {
	st := s.store(t)
	ms := time.Millisecond
	lim := store.Totals{CPUTime: 2 * time.Second}
	u := store.Totals{CPUTime: 3 * ms}
	a := one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 1, Used: u,
		Want: store.Totals{CPUTime: time.Second}, Limit: lim})
	assert.Equal(t, u, a.Reported)
	assert.Equal(t, 3*ms+time.Second, a.Allowance.CPUTime, "granted what was asked")
	assert.Zero(t, leasedOf(a.Allowance))
	b := one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 1,
		Want: store.Totals{CPUTime: 1500 * ms}, Limit: lim})
	assert.Equal(t, 997*ms, b.Allowance.CPUTime, "what the limit leaves: 2s - 3ms used - 1s leased to a")
	a = one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 2, Used: store.Totals{CPUTime: 100 * ms},
		Return: store.Totals{CPUTime: 400 * ms}, Limit: lim})
	assert.Equal(t, 103*ms+500*ms, a.Allowance.CPUTime, "1s lease - 100ms used - 400ms given back")
	b = one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 2,
		Want: store.Totals{CPUTime: time.Second}, Limit: lim})
	assert.Equal(t, 997*ms+400*ms, b.Allowance.CPUTime, "the 400ms a gave back")
	a = one(t, st, "a", long, true, store.TenantSync{Tenant: "t", Seq: 3, Limit: lim})
	assert.Equal(t, a.Reported.CPUTime, a.Allowance.CPUTime, "Final gives the lease back")
}

func (s *suite) testCPUTimeRoundTrip(t *testing.T) {
	st := s.store(t)
	// Whole microseconds round-trip exactly, however large.
	reports := []time.Duration{1500 * time.Microsecond, 2*time.Hour + time.Microsecond, 1000 * time.Hour, time.Microsecond}
	var sum time.Duration
	for i, d := range reports {
		sum += d
		got := one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: uint64(i + 1), Used: store.Totals{CPUTime: d}})
		require.Equal(t, sum, got.Reported.CPUTime)
		require.Equal(t, sum, got.Committed.CPUTime)
	}
	b := one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 1, Used: store.Totals{CPUTime: 7 * time.Microsecond}})
	assert.Equal(t, sum+7*time.Microsecond, b.Committed.CPUTime)
	assert.Equal(t, 7*time.Microsecond, b.Reported.CPUTime)
	assert.Equal(t, sum+7*time.Microsecond, load(t, st, "t").CPUTime)
}

func (s *suite) testCPUTimeSubMicrosecond(t *testing.T) {
	st := s.store(t)
	res := s.cfg.CPUResolution
	reports := []time.Duration{1, 999, 1001, 500, 500, 1234567, 3, 997}
	var sum time.Duration
	for i, d := range reports {
		sum += d
		got := one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: uint64(i + 1), Used: store.Totals{CPUTime: d}})
		n := time.Duration(i + 1)
		for what, v := range map[string]time.Duration{"reported": got.Reported.CPUTime, "committed": got.Committed.CPUTime} {
			require.LessOrEqual(t, v, sum, "%s CPU time above what was sent", what)
			if res == 0 {
				require.Equal(t, sum, v, "%s CPU time", what)
			} else {
				require.Greater(t, v, sum-n*res, "%s CPU time short by more than the resolution per report", what)
			}
		}
	}
	got := load(t, st, "t").CPUTime
	assert.LessOrEqual(t, got, sum)
	if res == 0 {
		assert.Equal(t, sum, got)
	} else {
		assert.Greater(t, got, sum-time.Duration(len(reports))*res)
	}
}

func (s *suite) testFinalGivesBack(t *testing.T) {
	st := s.store(t)
	lim := leased(100, 10, 0, 0)
	a := one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 1, Want: leased(100, 10, 0, 0), Limit: lim})
	assert.Equal(t, leased(100, 10, 0, 0), leasedOf(a.Allowance))
	b := one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 1, Want: leased(100, 10, 0, 0), Limit: lim})
	assert.Zero(t, leasedOf(b.Allowance))

	used := store.Totals{Operations: 30, Calls: 1, CPUTime: 9 * time.Microsecond}
	a = one(t, st, "a", long, true, store.TenantSync{Tenant: "t", Seq: 2, Used: used, Want: leased(5, 5, 0, 0), Limit: lim})
	assert.Equal(t, used, a.Reported)
	assert.Equal(t, leasedOf(used), leasedOf(a.Allowance), "Final leaves no unused allowance")
	assert.Equal(t, used, a.Committed)

	b = one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 2, Want: leased(100, 10, 0, 0), Limit: lim})
	assert.Equal(t, leased(70, 9, 0, 0), leasedOf(b.Allowance), "what a gave back")

	// The replica may come back after a Final and lease again.
	a = one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 3, Want: leased(5, 5, 0, 0), Limit: lim})
	assert.Equal(t, leasedOf(used), leasedOf(a.Allowance), "nothing left for a")
	b = one(t, st, "b", long, true, store.TenantSync{Tenant: "t", Seq: 3, Used: ops(20), Limit: lim})
	assert.Equal(t, ops(20), leasedOf(b.Allowance))
	a = one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 4, Want: leased(100, 100, 0, 0), Limit: lim})
	assert.Equal(t, leased(80, 10, 0, 0), leasedOf(a.Allowance))
	assert.Equal(t, used.Add(ops(20)), load(t, st, "t"))
}

func (s *suite) testFinalOnRetry(t *testing.T) {
	st := s.store(t)
	lim := ops(100)
	a := one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 1, Used: ops(10), Want: ops(50), Limit: lim})
	assert.Equal(t, ops(60), leasedOf(a.Allowance))
	// The final sync retries the last acknowledged Seq: its report is not
	// applied again, but the unused allowance is given back.
	a = one(t, st, "a", long, true, store.TenantSync{Tenant: "t", Seq: 1, Used: ops(10), Want: ops(50), Limit: lim})
	assert.Equal(t, ops(10), a.Reported)
	assert.Equal(t, ops(10), leasedOf(a.Allowance))
	assert.Equal(t, ops(10), a.Committed)
	b := one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 1, Want: ops(1000), Limit: lim})
	assert.Equal(t, ops(90), leasedOf(b.Allowance))
}

// testExpiredLeaseStaysCounted: a replica that stops syncing keeps its
// unused allowance counted against the limit after its lease expires (it
// may have used it without reporting), while the committed totals show
// only what it reported.
func (s *suite) testExpiredLeaseStaysCounted(t *testing.T) {
	st := s.store(t)
	ttl := s.cfg.LeaseTTL
	lim := leased(100, 0, 50, 0)
	a := one(t, st, "a", ttl, false, store.TenantSync{Tenant: "t", Seq: 1, Used: ops(10), Want: leased(1000, 0, 1000, 0), Limit: lim})
	assert.Equal(t, leased(100, 0, 50, 0), leasedOf(a.Allowance))
	if s.cfg.Advance != nil {
		s.advance(t, ttl+time.Millisecond)
	} else {
		time.Sleep(ttl + 50*time.Millisecond) // a store on the real clock: its lease expires only in real time
	}
	b := one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 1, Want: leased(1000, 0, 1000, 0), Limit: lim})
	assert.Zero(t, leasedOf(b.Allowance), "a's expired lease still counts against the limit")
	assert.Equal(t, ops(10), load(t, st, "t"), "the bill shows only what a reported")

	// a comes back: its allowance is still its own.
	a = one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 2, Used: ops(30), Limit: lim})
	assert.Equal(t, ops(40), a.Reported)
	assert.Equal(t, leased(100, 0, 50, 0), leasedOf(a.Allowance))
}

// testReturnAndMinGrant: Return gives back unused allowance before the
// grant (never below what was reported), and a grant below MinGrant is not
// made.
func (s *suite) testReturnAndMinGrant(t *testing.T) {
	st := s.store(t)
	lim := leased(100, 0, 0, 10)
	a := one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 1, Used: ops(10), Want: leased(60, 0, 0, 6), Limit: lim})
	assert.Equal(t, leased(70, 0, 0, 6), leasedOf(a.Allowance))
	b := one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 1, Want: leased(50, 0, 0, 5), MinGrant: leased(31, 0, 0, 4), Limit: lim})
	assert.Equal(t, leased(0, 0, 0, 4), leasedOf(b.Allowance), "30 ops left < MinGrant 31: none; 4 evaluations left >= 4: all")
	// a used 5 more and gives back 40 of its 55 unused.
	a = one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 2, Used: ops(5), Return: leased(40, 0, 0, 100), Limit: lim})
	assert.Equal(t, leased(30, 0, 0, 0), leasedOf(a.Allowance), "what it gave back, never below what it reported")
	b = one(t, st, "b", long, false, store.TenantSync{Tenant: "t", Seq: 2, Want: ops(80), MinGrant: ops(31), Limit: lim})
	assert.Equal(t, leased(70, 0, 0, 4), leasedOf(b.Allowance))
	// A retry gives back nothing more.
	a = one(t, st, "a", long, false, store.TenantSync{Tenant: "t", Seq: 2, Used: ops(5), Return: leased(40, 0, 0, 100), Limit: lim})
	assert.Equal(t, leased(30, 0, 0, 0), leasedOf(a.Allowance))
	assert.Equal(t, ops(15), load(t, st, "t"))
}

// testListTenants lists every tenant with its committed totals, if the
// store is a store.TenantLister.
func (s *suite) testListTenants(t *testing.T) {
	st := s.store(t)
	lister, ok := st.(store.TenantLister)
	if !ok {
		t.Skip("the store is not a TenantLister")
	}
	want := map[string]store.Totals{}
	for i, name := range []string{"plain", "with {braces} and %", "*glob?[x]", "ünïcode"} {
		tot := leased(int64(i+1), 2, 3, 4)
		tot.CPUTime = time.Duration(i) * time.Millisecond
		one(t, st, "r", long, false, store.TenantSync{Tenant: name, Seq: 1, Used: tot})
		want[name] = tot
	}
	got := map[string]store.Totals{}
	require.NoError(t, lister.ListTenants(context.Background(), func(tenant string, c store.Totals) error {
		got[tenant] = c
		return nil
	}))
	assert.Equal(t, want, got)
	stop := errors.New("stop")
	n := 0
	err := lister.ListTenants(context.Background(), func(string, store.Totals) error { n++; return stop })
	assert.ErrorIs(t, err, stop)
	assert.Equal(t, 1, n, "stops at fn's first error")
}

// hammerReplica is one replica's view in the hammer test.
type hammerReplica struct {
	id        string
	seq       uint64
	reported  map[string]store.Totals // per tenant, as acknowledged
	allowance map[string]store.Totals
	reports   int64 // reports applied, for the CPU tolerance
}

func (s *suite) testHammer(t *testing.T) {
	st := s.store(t)
	tenants := []string{"h1", "h2"}
	limits := map[string]store.Totals{
		"h1": leased(5000, 2000, 1<<22, 0),
		"h2": leased(0, 3000, 0, 1500),
	}
	const replicas, maxRounds = 6, 3000
	errs := make(chan error, replicas)
	done := make([]*hammerReplica, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Go(func() {
			r := &hammerReplica{id: fmt.Sprintf("r%d", i), reported: map[string]store.Totals{}, allowance: map[string]store.Totals{}}
			done[i] = r
			errs <- s.hammer(st, r, tenants, limits, rand.New(rand.NewPCG(uint64(i), 42)), maxRounds)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	// A newcomer syncs without usage to read the committed totals.
	probe := syncReq(t, st, store.SyncRequest{Replica: "probe", LeaseTTL: long,
		Tenants: []store.TenantSync{{Tenant: "h1", Seq: 1}, {Tenant: "h2", Seq: 1}}})
	var reports int64
	for _, r := range done {
		reports += r.reports
	}
	for k, tn := range tenants {
		var sum store.Totals
		for _, r := range done {
			sum = sum.Add(r.reported[tn])
		}
		committed := probe[k].Committed
		assert.Equal(t, leasedOf(sum), leasedOf(committed), "%s: committed = sum of what the replicas reported", tn)
		assert.LessOrEqual(t, committed.CPUTime, sum.CPUTime)
		assert.Greater(t, committed.CPUTime, sum.CPUTime-time.Duration(reports)*s.cfg.CPUResolution-1)
		assert.Equal(t, committed, load(t, st, tn), "%s: Load returns the committed totals", tn)
		lim := limits[tn]
		for _, res := range leasedFields {
			l := get(lim, res)
			if l == 0 {
				continue
			}
			got := get(committed, res)
			assert.LessOrEqual(t, got, l, "%s %v: the fleet never passes the limit", tn, res)
			assert.GreaterOrEqual(t, got*100, l*95, "%s %v: at least 95%% of the limit is granted", tn, res)
		}
	}
}

// hammer drives one replica: each round it uses part of its unused
// allowance (never more), reports it and asks for more, sometimes
// retrying a report whose answer it pretends to have lost. It stops when
// every limited resource is used up and the store grants no more (three
// rounds in a row), and gives back with a Final sync.
func (s *suite) hammer(st store.Store, r *hammerReplica, tenants []string, limits map[string]store.Totals, rng *rand.Rand, maxRounds int) error {
	idle := 0
	for round := 0; idle < 3; round++ {
		if round == maxRounds {
			return fmt.Errorf("%s: not done after %d rounds", r.id, maxRounds)
		}
		granted, err := s.hammerRound(st, r, tenants, limits, rng)
		if err != nil {
			return err
		}
		switch {
		case granted:
			idle = 0
		case !r.hasUnused(tenants, limits):
			idle++
		}
		if idle > 0 && idle < 3 {
			// A back-off between polls while the others use what they
			// hold: how soon this replica asks again, never what it is
			// granted (on a real store the others' round trips take
			// real time too).
			time.Sleep(time.Millisecond)
		}
	}
	return r.giveBack(st, tenants, limits)
}

// hammerRound is one round of hammer: one sync of every tenant (retried
// now and then), whose answer is checked and taken in. It reports whether
// the store granted more of a limited resource.
func (s *suite) hammerRound(st store.Store, r *hammerReplica, tenants []string, limits map[string]store.Totals, rng *rand.Rand) (granted bool, err error) {
	r.seq++
	req := store.SyncRequest{Replica: r.id, LeaseTTL: long}
	for _, tn := range tenants {
		req.Tenants = append(req.Tenants, r.report(tn, limits[tn], rng))
	}
	resp, err := r.syncRetrying(st, req, rng)
	if err != nil {
		return false, err
	}
	for k, ts := range req.Tenants {
		g, err := s.takeAnswer(r, ts, resp.Tenants[k])
		if err != nil {
			return false, err
		}
		granted = granted || g
	}
	r.reports++
	return granted, nil
}

// report is the replica's report of tenant tn this round: of each limited
// resource it uses part or all of its unused allowance and wants more; of
// each unlimited one it reports a little; and some CPU time.
func (r *hammerReplica) report(tn string, lim store.Totals, rng *rand.Rand) store.TenantSync {
	var used, want store.Totals
	for _, x := range leasedFields {
		if get(lim, x) == 0 {
			set(&used, x, rng.Int64N(3)) // unlimited: only reported
			continue
		}
		unused := get(r.allowance[tn], x) - get(r.reported[tn], x)
		if unused > 0 {
			n := unused
			if rng.IntN(2) == 0 {
				n = 1 + rng.Int64N(unused)
			}
			set(&used, x, n)
		}
		set(&want, x, 1+rng.Int64N(get(lim, x)/20))
	}
	used.CPUTime = time.Duration(rng.Int64N(5000))
	return store.TenantSync{Tenant: tn, Seq: r.seq, Used: used, Want: want, Limit: lim}
}

// syncRetrying sends req; one time in ten it pretends the answer was lost
// and sends it again, which must answer the same.
func (r *hammerReplica) syncRetrying(st store.Store, req store.SyncRequest, rng *rand.Rand) (store.SyncResponse, error) {
	ctx := context.Background()
	resp, err := st.Sync(ctx, req)
	if err != nil || rng.IntN(10) != 0 {
		return resp, err
	}
	again, err := st.Sync(ctx, req)
	if err != nil {
		return again, err
	}
	for k := range resp.Tenants {
		a, b := resp.Tenants[k], again.Tenants[k]
		if a.Reported != b.Reported || a.Allowance != b.Allowance {
			return again, fmt.Errorf("%s: retry of seq %d changed %s: %+v then %+v", r.id, r.seq, a.Tenant, a, b)
		}
	}
	return again, nil
}

// takeAnswer checks the store's answer got to the report ts (for the
// tenant, reported what was sent on top of what it had, within the CPU
// resolution; an allowance never below what was reported) and keeps it.
// It reports whether the answer grants more of a limited resource.
func (s *suite) takeAnswer(r *hammerReplica, ts store.TenantSync, got store.TenantState) (granted bool, err error) {
	if got.Tenant != ts.Tenant {
		return false, fmt.Errorf("%s: answer is for %q, not %q", r.id, got.Tenant, ts.Tenant)
	}
	want := r.reported[ts.Tenant].Add(ts.Used)
	if leasedOf(got.Reported) != leasedOf(want) {
		return false, fmt.Errorf("%s: %s reported %+v, want %+v", r.id, ts.Tenant, got.Reported, want)
	}
	if got.Reported.CPUTime > want.CPUTime || got.Reported.CPUTime <= want.CPUTime-s.cfg.CPUResolution*time.Duration(r.reports+1)-1 {
		return false, fmt.Errorf("%s: %s reported CPU %v, want %v", r.id, ts.Tenant, got.Reported.CPUTime, want.CPUTime)
	}
	for _, x := range leasedFields {
		if get(ts.Limit, x) > 0 && get(got.Allowance, x) > get(r.allowance[ts.Tenant], x) {
			granted = true
		}
		if get(got.Allowance, x) < get(got.Reported, x) {
			return false, fmt.Errorf("%s: %s allowance %+v below reported %+v", r.id, ts.Tenant, got.Allowance, got.Reported)
		}
	}
	r.reported[ts.Tenant] = got.Reported
	r.allowance[ts.Tenant] = got.Allowance
	return granted, nil
}

// giveBack sends the replica's Final sync, which must give back every
// unused allowance.
func (r *hammerReplica) giveBack(st store.Store, tenants []string, limits map[string]store.Totals) error {
	r.seq++
	req := store.SyncRequest{Replica: r.id, LeaseTTL: long, Final: true}
	for _, tn := range tenants {
		req.Tenants = append(req.Tenants, store.TenantSync{Tenant: tn, Seq: r.seq, Limit: limits[tn]})
	}
	resp, err := st.Sync(context.Background(), req)
	if err != nil {
		return err
	}
	for _, ts := range resp.Tenants {
		if leasedOf(ts.Allowance) != leasedOf(ts.Reported) {
			return fmt.Errorf("%s: %s allowance %+v after Final, reported %+v", r.id, ts.Tenant, ts.Allowance, ts.Reported)
		}
	}
	return nil
}

func (r *hammerReplica) hasUnused(tenants []string, limits map[string]store.Totals) bool {
	for _, tn := range tenants {
		for _, x := range leasedFields {
			if get(limits[tn], x) > 0 && get(r.allowance[tn], x) > get(r.reported[tn], x) {
				return true
			}
		}
	}
	return false
}

// field names a quantity of store.Totals, for the checks that treat the
// leased ones alike.
type field int

const (
	fOps field = iota
	fCalls
	fMem
	fEvals
)

// leasedFields are the quantities the random checks lease (CPU time has
// tests of its own: it is kept in microseconds by some stores).
var leasedFields = []field{fOps, fCalls, fMem, fEvals}

func get(t store.Totals, f field) int64 {
	switch f {
	case fOps:
		return t.Operations
	case fCalls:
		return t.Calls
	case fMem:
		return t.TotalMemory
	case fEvals:
		return t.Evaluations
	}
	return 0
}

func set(t *store.Totals, f field, v int64) {
	switch f {
	case fOps:
		t.Operations = v
	case fCalls:
		t.Calls = v
	case fMem:
		t.TotalMemory = v
	case fEvals:
		t.Evaluations = v
	}
}
