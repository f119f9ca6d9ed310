package reslimit

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Totals are a tenant's cumulative quantities that a fleet of replicas
// shares through a Store: operations, function calls, bytes charged
// (TotalMemory), CPU time and evaluations.
type Totals struct {
	Operations  int64
	Calls       int64
	TotalMemory int64 // bytes
	CPUTime     time.Duration
	Evaluations int64
}

// Add returns t + u, field by field.
func (t Totals) Add(u Totals) Totals {
	return Totals{t.Operations + u.Operations, t.Calls + u.Calls,
		t.TotalMemory + u.TotalMemory, t.CPUTime + u.CPUTime, t.Evaluations + u.Evaluations}
}

// Sub returns t - u, field by field.
func (t Totals) Sub(u Totals) Totals {
	return Totals{t.Operations - u.Operations, t.Calls - u.Calls,
		t.TotalMemory - u.TotalMemory, t.CPUTime - u.CPUTime, t.Evaluations - u.Evaluations}
}

// IsZero reports whether every field is 0.
func (t Totals) IsZero() bool { return t == Totals{} }

// Get returns the field for r (CPUTime in nanoseconds), or 0 for a
// resource Totals does not hold.
func (t Totals) Get(r Resource) int64 {
	switch r {
	case Operations:
		return t.Operations
	case Calls:
		return t.Calls
	case TotalMemory:
		return t.TotalMemory
	case CPUTime:
		return int64(t.CPUTime)
	case Evaluations:
		return t.Evaluations
	}
	return 0
}

// Set sets the field for r (CPUTime in nanoseconds); other resources are ignored.
func (t *Totals) Set(r Resource, v int64) {
	switch r {
	case Operations:
		t.Operations = v
	case Calls:
		t.Calls = v
	case TotalMemory:
		t.TotalMemory = v
	case CPUTime:
		t.CPUTime = time.Duration(v)
	case Evaluations:
		t.Evaluations = v
	}
}

// leasedResources are the fleet quantities a replica needs an allowance
// (lease) for before it hands them out. CPU time, measured after it is
// spent, is leased too: a replica stops its tenant's runs when their CPU
// time passes its lease and the store has no more to give.
var leasedResources = [...]Resource{Operations, Calls, TotalMemory, Evaluations, CPUTime}

// TenantSync is one tenant's part of a SyncRequest.
type TenantSync struct {
	Tenant string
	// Seq numbers this report for (Replica, Tenant). It grows with every new
	// report; a retry of a report whose answer was lost carries the same Seq
	// and the same Used, and the store applies it at most once.
	Seq uint64
	// Used is what the replica consumed since its last acknowledged report.
	Used Totals
	// Want is the extra allowance the replica asks for, per leased
	// resource (Operations, Calls, TotalMemory, Evaluations, CPUTime).
	Want Totals
	// Limit is the tenant's cumulative limits (0 = no limit); the store
	// never grants allowance past them, fleet-wide.
	Limit Totals
	// Return is unused allowance the replica gives back, per leased
	// resource, before the grant (at most what it holds unused): a replica
	// gives back a lease it does not use, or one too small for the charge
	// it waits for, so that another replica (or itself) can be granted it
	// whole.
	Return Totals
	// MinGrant is the least grant worth having, per leased resource: when
	// the store could grant less than MinGrant of a resource it grants
	// none of it (a lease smaller than the charge waiting for it would only
	// strand quota near the limit).
	MinGrant Totals
	// Period is the billing period this report's Used was charged in and
	// its Want and Return are for: the replica's open period (0 means 1).
	// A Period after the tenant's open period in the store closes that
	// one and opens Period: the committed totals and the fleet-wide
	// quotas start over. A Period before it (a replica that has not
	// learnt of the close yet) is billed to that period, and nothing is
	// granted: TenantState.Period tells the replica to close its own.
	Period uint64
	// Closed are the replica's final reports for periods it has closed
	// since its last acknowledged report (each before Period, each once):
	// what it used in each that it had not reported yet. A final report
	// gives back the replica's lease for that period; once every replica
	// that held one has given it back (or its lease expired), the
	// period's totals are final (see PeriodLoader).
	Closed []ClosedReport
	// LostBefore, when not 0, says that the store lost reports this
	// replica had made for the tenant (a Redis restarted without its
	// data) that were charged in periods before LostBefore: a store that
	// keeps periods marks those periods lost (StorePeriod.Lost), never
	// final. The replica reports again what it had reported for its open
	// period, but never bills a closed period's usage to another period.
	LostBefore uint64
}

// ClosedReport is a replica's last report for a closed billing period.
type ClosedReport struct {
	Period uint64
	Used   Totals
}

// SyncRequest is one replica's batched report of many tenants' usage and
// its request for leases.
type SyncRequest struct {
	Replica string
	// LeaseTTL is how long the replica will hand out the allowance granted
	// now without another sync. The store never reclaims allowance when a
	// lease expires: a replica that vanished may have used it all, so it
	// keeps counting against the limit (see Store). Stores may use it to
	// tell live replicas from gone ones.
	LeaseTTL time.Duration
	// Final gives back every unused allowance after applying the reports
	// (the replica is shutting down).
	Final   bool
	Tenants []TenantSync
}

// TenantState is the store's answer for one tenant, after applying the
// report.
type TenantState struct {
	Tenant string
	// Committed is the tenant's fleet-wide reported totals.
	Committed Totals
	// Reported is what this replica has reported in all (absolute).
	Reported Totals
	// Allowance is the cumulative allowance granted to this replica
	// (absolute): the replica may hand out, in all, up to Allowance of each
	// leased resource. It grows with grants, shrinks by what the replica
	// gives back (Return) and falls back to Reported when it syncs with
	// Final; never below Reported. A Reported below what the replica knows
	// it reported tells it that the store lost data (a Redis restarted
	// without persistence).
	Allowance Totals
	// Seq is the last Seq the store applied for this replica and tenant:
	// the request's own when it was applied now or before. A greater one
	// tells the replica that its report was ignored as stale. A store that
	// leaves it 0 is trusted to have applied the report.
	Seq uint64
	// Period is the tenant's open billing period in the store (0 means
	// 1), and Committed is its totals. Allowance is for the request's
	// Period: when the store's is later, the replica's period is closed
	// fleet-wide, and it should close its own (and give its lease back
	// with a ClosedReport).
	Period uint64
}

// SyncResponse answers a SyncRequest: one TenantState per requested
// tenant, in the same order.
type SyncResponse struct {
	Tenants []TenantState
}

// Store keeps the committed cumulative totals of tenants for a fleet of
// replicas and hands out allowance (leases) so that the fleet never passes
// a tenant's limit. Implementations must be safe for concurrent use.
//
// Sync applies each tenant's report at most once per (Replica, Tenant,
// Seq): a report whose Seq is not greater than the last applied one for
// that replica and tenant changes nothing, and its state is returned as
// is. An applied report first adds Used, then gives back Return of the
// replica's unused allowance, then, for each leased resource with a limit,
// grants the replica up to Want more (nothing if less than MinGrant can be
// granted), never letting the sum over replicas of max(Allowance,
// Reported) pass the limit.
//
// Allowance is never reclaimed behind a replica's back: only the replica
// gives it back (Return, Final). The unused allowance of a replica that
// stopped without Close keeps counting against the limit, as it may have
// been used without being reported; it is the price of a crash (see the
// README's fleet section for the bound).
type Store interface {
	Sync(ctx context.Context, req SyncRequest) (SyncResponse, error)
	// Load returns a tenant's committed fleet-wide totals.
	Load(ctx context.Context, tenant string) (Totals, error)
}

// StorePeriod is a tenant's fleet-wide totals for one billing period, as
// a PeriodLoader reads them.
type StorePeriod struct {
	Tenant string
	// Number is the period's number; Open is the tenant's open period in
	// the store.
	Number, Open uint64
	// Totals are the committed totals of the period (zero for a period
	// the store never saw, or whose keys expired; see the store).
	Totals
	// Final is true when the period is closed (Number < Open) and every
	// replica that held a lease for it has sent its final report or let
	// its lease expire: its totals can no longer change.
	Final bool
	// Lost is true when the store lost reports charged in the period (it
	// lost its data after the period closed; see TenantSync.LostBefore):
	// its Totals are partial, and it is never Final. The replicas' own
	// lines for it (Ledger.Periods, WithPeriodClosed) still hold what each
	// charged in it.
	Lost bool
}

// PeriodLoader is implemented by stores that keep billing periods (the
// Redis store and MemoryStore do).
type PeriodLoader interface {
	// LoadPeriod returns a tenant's committed totals for a period.
	LoadPeriod(ctx context.Context, tenant string, period uint64) (StorePeriod, error)
}

// TenantLister is implemented by stores that can list every tenant they
// hold (the Redis store and MemoryStore do), for fleet-wide invoices.
type TenantLister interface {
	// ListTenants calls fn with each tenant the store holds and its
	// committed totals, in no particular order, without holding them all
	// in memory at once, and stops at fn's first error, which it returns.
	// A tenant synced while the listing runs may be missed; one may be
	// listed twice (see the store's documentation).
	ListTenants(ctx context.Context, fn func(tenant string, committed Totals) error) error
}

// MemoryStore is the in-process Store: a ledger without WithStore behaves
// as if it had one of its own. It is safe for concurrent use and is useful
// to share between ledgers in one process (and in tests). The zero
// MemoryStore is an empty store, as NewMemoryStore returns.
type MemoryStore struct {
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
	for _, r := range leasedResources {
		me.allowance.Set(r, me.reported.Get(r))
	}
}

// validPeriods checks a report's periods: its closed periods come before
// its period, each once.
func validPeriods(ts TenantSync) error {
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

// NewMemoryStore returns an empty in-memory store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{now: time.Now, tenants: make(map[string]*memTenant)}
}

// Load implements Store: it returns the committed totals of the tenant's
// open period.
func (s *MemoryStore) Load(_ context.Context, tenant string) (Totals, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tenants[tenant]; t != nil {
		return t.committed, nil
	}
	return Totals{}, nil
}

// LoadPeriod implements PeriodLoader (period 0 reads as the open one).
// MemoryStore keeps every closed period.
func (s *MemoryStore) LoadPeriod(_ context.Context, tenant string, period uint64) (StorePeriod, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp := StorePeriod{Tenant: tenant, Number: period, Open: 1}
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

func (s *MemoryStore) clock() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}

// ListTenants implements TenantLister. It lists a copy of the tenant
// names, so fn may use the store.
func (s *MemoryStore) ListTenants(ctx context.Context, fn func(tenant string, committed Totals) error) error {
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
func (s *MemoryStore) Sync(ctx context.Context, req SyncRequest) (SyncResponse, error) {
	if err := ctx.Err(); err != nil {
		return SyncResponse{}, err
	}
	if req.Replica == "" {
		return SyncResponse{}, fmt.Errorf("%w: sync without a replica id", ErrInvalidArgument)
	}
	for _, ts := range req.Tenants {
		if err := validPeriods(ts); err != nil {
			return SyncResponse{}, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock()
	if s.tenants == nil {
		s.tenants = make(map[string]*memTenant) // a zero MemoryStore
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
		if ts.Seq > me.seq {
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
			for _, r := range leasedResources {
				if ret := ts.Return.Get(r); ret > 0 {
					unused := max(0, me.allowance.Get(r)-me.reported.Get(r))
					me.allowance.Set(r, me.reported.Get(r)+max(0, unused-ret))
				}
			}
			for _, r := range leasedResources {
				lim, want := ts.Limit.Get(r), ts.Want.Get(r)
				if lim <= 0 || want <= 0 || target != t.openNo() || max(me.period, 1) != target {
					continue
				}
				held := t.committed.Get(r)
				for _, o := range t.replicas {
					if max(o.period, 1) == target {
						held += max(0, o.allowance.Get(r)-o.reported.Get(r))
					}
				}
				grant := min(want, lim-held)
				if grant < ts.MinGrant.Get(r) {
					grant = 0
				}
				if grant > 0 {
					base := max(me.allowance.Get(r), me.reported.Get(r))
					me.allowance.Set(r, base+grant)
				}
			}
			if !req.Final {
				leases[req.Replica] = now.Add(req.LeaseTTL)
			}
		}
		for _, r := range leasedResources {
			if me.allowance.Get(r) < me.reported.Get(r) {
				me.allowance.Set(r, me.reported.Get(r))
			}
		}
		if req.Final {
			me.allowance = me.reported
			_, leases := t.period(min(target, t.openNo()))
			delete(leases, req.Replica)
		}
		resp.Tenants[k] = TenantState{Tenant: ts.Tenant, Committed: t.committed, Reported: me.reported, Allowance: me.allowance, Seq: me.seq, Period: t.openNo()}
	}
	return resp, nil
}
