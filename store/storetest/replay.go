package storetest

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit/store"
)

// replayKey is one replica's view of one tenant in a replay.
type replayKey struct{ replica, tenant string }

// replay is what the random replays (MatchesMemoryStore,
// PeriodsMatchMemoryStore) share: their random source, the reference store
// they compare with (on a clock of its own, moved on by expire), and each
// replica's last sequence number and report per tenant.
type replay struct {
	rng   *rand.Rand
	ref   *store.Memory
	clock atomic.Int64 // the reference's time, in Unix nanoseconds
	seqs  map[replayKey]uint64
	last  map[replayKey]store.TenantSync
}

func newReplay(seed1, seed2 uint64) *replay {
	r := &replay{
		rng:  rand.New(rand.NewPCG(seed1, seed2)),
		seqs: map[replayKey]uint64{},
		last: map[replayKey]store.TenantSync{},
	}
	r.clock.Store(time.Now().UnixNano())
	r.ref = store.NewMemoryAt(func() time.Time { return time.Unix(0, r.clock.Load()) })
	return r
}

// rv returns a random value in [0, n).
func (r *replay) rv(n int64) int64 { return r.rng.Int64N(n) }

// replicaOf picks one of replicas at random.
func (r *replay) replicaOf(replicas []string) string { return replicas[r.rng.IntN(len(replicas))] }

// syncBoth sends req to the reference and to st, requires the same
// answer from both, and returns it.
func (r *replay) syncBoth(t *testing.T, st store.Store, step int, req store.SyncRequest) store.SyncResponse {
	t.Helper()
	wantResp, err := r.ref.Sync(context.Background(), req)
	require.NoError(t, err)
	gotResp, err := st.Sync(context.Background(), req)
	require.NoError(t, err, "step %d", step)
	require.Equal(t, wantResp, gotResp, "step %d: %+v", step, req)
	return gotResp
}

// expire lets the leases of 0 just granted expire on both stores (both
// keep time at least to the millisecond): the reference's clock moves on
// 2ms, and so does the store's, with Config.Advance or, for a store on the
// real clock, by sleeping (the only way to age it).
func (r *replay) expire(t *testing.T, s *suite) {
	const d = 2 * time.Millisecond
	r.clock.Add(int64(d))
	if s.cfg.Advance != nil {
		s.cfg.Advance(t, d)
	} else {
		time.Sleep(d)
	}
}

// matchReplay is the replay of MatchesMemoryStore: random syncs of
// several replicas and tenants under limits that change now and then.
type matchReplay struct {
	*replay
	replicas, tenants []string
	limits            map[string]store.Totals
	// allowance and reported are each replica's, per tenant, as the
	// store last answered.
	allowance, reported map[replayKey]store.Totals
}

// testMatchesMemoryStore replays a random sequence of syncs (several
// replicas and tenants, retries, stale and skipped sequence numbers,
// overspending, changing limits, Final syncs, returns, least grants,
// leases of an hour or of 0 that expire by the next step)
// on the store and on a MemoryStore, and requires the same answers. CPU
// time is sent in whole microseconds, which every store keeps exactly.
func (s *suite) testMatchesMemoryStore(t *testing.T) {
	st := s.store(t)
	m := &matchReplay{
		replay:   newReplay(7, 11),
		replicas: []string{"a", "b", "c"},
		tenants:  []string{"t1", "t2", "t3"},
		limits: map[string]store.Totals{
			"t1": leased(1000, 300, 1<<16, 50),
			"t2": leased(500, 0, 0, 0),
			"t3": {},
		},
		allowance: map[replayKey]store.Totals{},
		reported:  map[replayKey]store.Totals{},
	}
	for step := range 400 {
		req := m.request()
		resp := m.syncBoth(t, st, step, req)
		if req.LeaseTTL == 0 {
			m.expire(t, s)
		}
		for i, ts := range req.Tenants {
			k := replayKey{req.Replica, ts.Tenant}
			m.allowance[k] = resp.Tenants[i].Allowance
			m.reported[k] = resp.Tenants[i].Reported
		}
		if step%50 == 0 {
			m.compareLoads(t, st, step)
		}
	}
}

// request makes the next random request: one replica's sync of one to
// four tenants, sometimes Final, sometimes with a lease of 0 (expired by
// the next step: nothing is reclaimed).
func (m *matchReplay) request() store.SyncRequest {
	replica := m.replicaOf(m.replicas)
	req := store.SyncRequest{Replica: replica, LeaseTTL: long, Final: m.rng.IntN(15) == 0}
	if m.rng.IntN(8) == 0 {
		req.LeaseTTL = 0
	}
	for range 1 + m.rng.IntN(4) {
		tn := m.tenants[m.rng.IntN(len(m.tenants))]
		k := replayKey{replica, tn}
		if m.rng.IntN(30) == 0 { // limits change now and then
			l := m.limits[tn]
			l.Operations = max(0, l.Operations+m.rv(200)-100)
			m.limits[tn] = l
		}
		ts := m.tenantSync(k)
		m.last[k] = ts
		req.Tenants = append(req.Tenants, ts)
	}
	return req
}

// tenantSync is k's part of a request: a retry of its last report, a
// stale one, or a new report (whose Seq sometimes skips some).
func (m *matchReplay) tenantSync(k replayKey) store.TenantSync {
	switch p := m.rng.IntN(20); {
	case p == 0 && m.seqs[k] > 0:
		return m.last[k]
	case p == 1 && m.seqs[k] > 1:
		return store.TenantSync{Tenant: k.tenant, Seq: m.seqs[k] - 1 - uint64(m.rv(int64(m.seqs[k]-1))), Used: ops(m.rv(5))}
	}
	m.seqs[k] += 1 + uint64(m.rng.IntN(2)*m.rng.IntN(3))
	return m.report(k)
}

// report is a new report of k: it uses part of the unused allowance (or
// overspends), wants more, returns some and asks for least grants, at
// random for each leased resource.
func (m *matchReplay) report(k replayKey) store.TenantSync {
	lim := m.limits[k.tenant]
	var used, want, ret, minGrant store.Totals
	for _, x := range leasedFields {
		unused := get(m.allowance[k], x) - get(m.reported[k], x)
		switch {
		case m.rng.IntN(10) == 0:
			set(&used, x, m.rv(50)) // overspend, or unlimited use
		case unused > 0:
			set(&used, x, m.rv(unused+1))
		}
		if m.rng.IntN(3) > 0 {
			set(&want, x, m.rv(get(lim, x)/4+3))
		}
		if m.rng.IntN(4) == 0 {
			set(&ret, x, m.rv(unused+3))
		}
		if m.rng.IntN(4) == 0 {
			set(&minGrant, x, m.rv(get(lim, x)/4+3))
		}
	}
	used.CPUTime = time.Duration(m.rv(1e6)) * time.Microsecond
	want.CPUTime = time.Duration(m.rv(1e6))
	return store.TenantSync{Tenant: k.tenant, Seq: m.seqs[k], Used: used, Want: want, Limit: lim, Return: ret, MinGrant: minGrant}
}

// compareLoads requires the same committed totals of every tenant from
// st as from the reference.
func (m *matchReplay) compareLoads(t *testing.T, st store.Store, step int) {
	t.Helper()
	for _, tn := range m.tenants {
		w, err := m.ref.Load(context.Background(), tn)
		require.NoError(t, err)
		require.Equal(t, w, load(t, st, tn), "step %d: Load(%s)", step, tn)
	}
}
