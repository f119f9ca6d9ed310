package store

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Memory is the in-process Store: a reslimit.Ledger without a store behaves
// as if it had one of its own. It is safe for concurrent use and is useful
// to share between ledgers in one process (and in tests). The zero
// Memory is an empty store, as NewMemory returns.
type Memory struct {
	mu      sync.Mutex
	now     func() time.Time
	tenants map[string]*memTenant
}

type memTenant struct {
	committed Totals // the open period's
	open      uint64 // the open period (0 reads 1)
	// leases: replica → lease expiry, for the open period.
	leases   map[string]time.Time
	closed   map[uint64]*memClosed
	replicas map[string]*memReplica
	// lostBefore: the periods before it lost reports (TenantSync.LostBefore).
	lostBefore uint64
	// rates: the evaluation and operation rates' buckets.
	rates [2]memBucket
}

// memBucket is a tenant's fleet-wide token bucket (see Rate).
type memBucket struct {
	tokens float64
	at     time.Time // when tokens was last brought up to date
	seen   bool      // false: the bucket is full
}

// level returns the bucket's tokens at now for rate r, without changing it.
func (b *memBucket) level(r Rate, now time.Time) float64 {
	if !b.seen {
		return float64(r.Burst)
	}
	return RefillTokens(b.tokens, now.Sub(b.at), r.PerSecond, r.Burst)
}

// take applies a report's request of rate r at now and returns the
// answer (see Rate).
func (b *memBucket) take(r Rate, now time.Time) RateState {
	if r.PerSecond == 0 {
		return RateState{}
	}
	tok := min(b.level(r, now)+float64(r.Return), float64(r.Burst))
	g := min(r.Want, int64(tok))
	tok -= float64(g)
	b.tokens, b.at, b.seen = tok, now, true
	return RateState{Granted: g, Tokens: tok}
}

// memClosed is a closed period of a tenant.
type memClosed struct {
	committed Totals
	leases    map[string]time.Time // replica → lease expiry
}

type memReplica struct {
	seq       uint64
	reported  Totals // in all periods
	allowance Totals // reported + unused allowance for period
	period    uint64 // the period the allowance is for (0 reads 1)
}

func (t *memTenant) openNo() uint64 { return max(t.open, 1) }

// period returns the committed totals and lease set of period p (not
// after the open one), making them if needed.
func (t *memTenant) period(p uint64) (*Totals, map[string]time.Time) {
	if p == t.openNo() {
		if t.leases == nil {
			t.leases = make(map[string]time.Time)
		}
		return &t.committed, t.leases
	}
	c := t.closed[p]
	if c == nil {
		if t.closed == nil {
			t.closed = make(map[uint64]*memClosed)
		}
		c = &memClosed{leases: make(map[string]time.Time)}
		t.closed[p] = c
	}
	return &c.committed, c.leases
}

// moveTo closes the open period and opens p (after it): the committed
// totals start over, and the unused allowance granted for the old period
// no longer counts against the new one's quotas.
func (t *memTenant) moveTo(p uint64) {
	if t.closed == nil {
		t.closed = make(map[uint64]*memClosed)
	}
	leases := t.leases
	if leases == nil {
		leases = make(map[string]time.Time)
	}
	t.closed[t.openNo()] = &memClosed{committed: t.committed, leases: leases}
	t.committed, t.leases, t.open = Totals{}, nil, p
}

// giveBack sets the leased resources of the replica's allowance to what
// it reported: it has no unused allowance left.
func (me *memReplica) giveBack() {
	for _, r := range leased {
		me.allowance.set(r, me.reported.get(r))
	}
}

// validReport checks a report's rates and periods: its closed periods
// come before its period, each once.
func validReport(ts TenantSync) error {
	for _, r := range [...]Rate{ts.EvaluationRate, ts.OperationRate} {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("%w: tenant %q: %v", ErrInvalidArgument, ts.Tenant, err)
		}
	}
	p := max(ts.Period, 1)
	if ts.LostBefore > p {
		return fmt.Errorf("%w: tenant %q: lost periods before %d, after the report's period %d", ErrInvalidArgument, ts.Tenant, ts.LostBefore, p)
	}
	for i, c := range ts.Closed {
		if c.Period == 0 || c.Period >= p {
			return fmt.Errorf("%w: tenant %q: closed period %d is not before period %d", ErrInvalidArgument, ts.Tenant, c.Period, p)
		}
		for _, d := range ts.Closed[:i] {
			if d.Period == c.Period {
				return fmt.Errorf("%w: tenant %q: closed period %d reported twice", ErrInvalidArgument, ts.Tenant, c.Period)
			}
		}
	}
	return nil
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return NewMemoryAt(time.Now)
}

// NewMemoryAt returns an empty in-memory store that reads the time (for
// lease expiry) from now: for tests that move time on.
func NewMemoryAt(now func() time.Time) *Memory {
	return &Memory{now: now, tenants: make(map[string]*memTenant)}
}

// Load implements Store: it returns the committed totals of the tenant's
// open period.
func (s *Memory) Load(_ context.Context, tenant string) (Totals, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tenants[tenant]; t != nil {
		return t.committed, nil
	}
	return Totals{}, nil
}

// LoadPeriod implements PeriodLoader (period 0 reads as the open one).
// Memory keeps every closed period.
func (s *Memory) LoadPeriod(_ context.Context, tenant string, period uint64) (Period, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp := Period{Tenant: tenant, Number: period, Open: 1}
	t := s.tenants[tenant]
	if t != nil {
		sp.Open = t.openNo()
	}
	if sp.Number == 0 {
		sp.Number = sp.Open
	}
	if sp.Number > sp.Open {
		return sp, nil
	}
	if sp.Number == sp.Open {
		if t != nil {
			sp.Totals = t.committed
		}
		return sp, nil
	}
	sp.Lost = t != nil && sp.Number < t.lostBefore
	sp.Final = !sp.Lost
	if t == nil || t.closed[sp.Number] == nil {
		return sp, nil
	}
	c := t.closed[sp.Number]
	sp.Totals = c.committed
	now := s.clock()
	for _, exp := range c.leases {
		if !exp.Before(now) {
			sp.Final = false
		}
	}
	return sp, nil
}

func (s *Memory) clock() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}

// ListTenants implements TenantLister. It lists a copy of the tenant
// names, so fn may use the store.
func (s *Memory) ListTenants(ctx context.Context, fn func(tenant string, committed Totals) error) error {
	s.mu.Lock()
	names := make([]string, 0, len(s.tenants))
	for name := range s.tenants {
		names = append(names, name)
	}
	s.mu.Unlock()
	sort.Strings(names)
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		c, err := s.Load(ctx, name)
		if err != nil {
			return err
		}
		if err := fn(name, c); err != nil {
			return err
		}
	}
	return nil
}

// Sync implements Store.
func (s *Memory) Sync(ctx context.Context, req SyncRequest) (SyncResponse, error) {
	if err := ctx.Err(); err != nil {
		return SyncResponse{}, err
	}
	if req.Replica == "" {
		return SyncResponse{}, fmt.Errorf("%w: sync without a replica id", ErrInvalidArgument)
	}
	for _, ts := range req.Tenants {
		if err := validReport(ts); err != nil {
			return SyncResponse{}, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock()
	if s.tenants == nil {
		s.tenants = make(map[string]*memTenant) // a zero Memory
	}
	resp := SyncResponse{Tenants: make([]TenantState, len(req.Tenants))}
	for k, ts := range req.Tenants {
		t := s.tenants[ts.Tenant]
		if t == nil {
			t = &memTenant{replicas: make(map[string]*memReplica)}
			s.tenants[ts.Tenant] = t
		}
		me := t.replicas[req.Replica]
		if me == nil {
			me = &memReplica{}
			t.replicas[req.Replica] = me
		}
		target := max(ts.Period, 1)
		var rates [2]RateState
		if ts.Seq > me.seq {
			t.apply(req, ts, me, now)
			for i, r := range [...]Rate{ts.EvaluationRate, ts.OperationRate} {
				rates[i] = t.rates[i].take(r, now)
			}
		} else {
			for i, r := range [...]Rate{ts.EvaluationRate, ts.OperationRate} {
				if r.PerSecond > 0 {
					rates[i].Tokens = t.rates[i].level(r, now)
				}
			}
		}
		for _, r := range leased {
			if me.allowance.get(r) < me.reported.get(r) {
				me.allowance.set(r, me.reported.get(r))
			}
		}
		if req.Final {
			me.allowance = me.reported
			_, leases := t.period(min(target, t.openNo()))
			delete(leases, req.Replica)
		}
		resp.Tenants[k] = TenantState{Tenant: ts.Tenant, Committed: t.committed, Reported: me.reported, Allowance: me.allowance, Seq: me.seq, Period: t.openNo(),
			EvaluationRate: rates[0], OperationRate: rates[1]}
	}
	return resp, nil
}

// apply applies a new report ts of replica me (of req) to the tenant: the
// periods it closes, its usage, the allowance it gives back and the grant.
func (t *memTenant) apply(req SyncRequest, ts TenantSync, me *memReplica, now time.Time) {
	target := max(ts.Period, 1)
	me.seq = ts.Seq
	t.lostBefore = max(t.lostBefore, ts.LostBefore)
	if target > t.openNo() {
		t.moveTo(target)
	}
	// Final reports of closed periods give their leases back.
	for _, c := range ts.Closed {
		me.reported = me.reported.Add(c.Used)
		committed, leases := t.period(c.Period)
		*committed = committed.Add(c.Used)
		delete(leases, req.Replica)
		if max(me.period, 1) == c.Period {
			me.giveBack()
		}
	}
	if max(me.period, 1) < target {
		// A lease of an earlier period is no good in this one.
		me.giveBack()
		me.period = target
	}
	me.reported = me.reported.Add(ts.Used)
	committed, leases := t.period(target)
	*committed = committed.Add(ts.Used)
	for _, r := range leased {
		if ret := ts.Return.get(r); ret > 0 {
			unused := max(0, me.allowance.get(r)-me.reported.get(r))
			me.allowance.set(r, me.reported.get(r)+max(0, unused-ret))
		}
	}
	if target == t.openNo() && max(me.period, 1) == target {
		for _, r := range leased {
			t.grant(ts, me, r)
		}
	}
	if !req.Final {
		leases[req.Replica] = now.Add(req.LeaseTTL)
	}
}

// grant grants replica me up to what ts wants of r in the open period
// (nothing below its MinGrant) while the committed totals and every
// replica's unused allowance stay within the limit.
func (t *memTenant) grant(ts TenantSync, me *memReplica, r quantity) {
	lim, want := ts.Limit.get(r), ts.Want.get(r)
	if lim <= 0 || want <= 0 {
		return
	}
	held := t.committed.get(r)
	for _, o := range t.replicas {
		if max(o.period, 1) == t.openNo() {
			held += max(0, o.allowance.get(r)-o.reported.get(r))
		}
	}
	grant := min(want, lim-held)
	if grant < ts.MinGrant.get(r) {
		grant = 0
	}
	if grant > 0 {
		base := max(me.allowance.get(r), me.reported.get(r))
		me.allowance.set(r, base+grant)
	}
}
