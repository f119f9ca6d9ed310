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
// (lease) for before it hands them out. CPU time is only reported: it is
// measured after it is spent.
var leasedResources = [...]Resource{Operations, Calls, TotalMemory, Evaluations}

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
	// resource (Operations, Calls, TotalMemory, Evaluations).
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
	committed Totals
	replicas  map[string]*memReplica
}

type memReplica struct {
	seq       uint64
	reported  Totals
	allowance Totals
	expires   time.Time
}

// NewMemoryStore returns an empty in-memory store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{now: time.Now, tenants: make(map[string]*memTenant)}
}

// Load implements Store.
func (s *MemoryStore) Load(_ context.Context, tenant string) (Totals, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tenants[tenant]; t != nil {
		return t.committed, nil
	}
	return Totals{}, nil
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
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.now != nil {
		now = s.now()
	}
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
		if ts.Seq > me.seq {
			me.seq = ts.Seq
			me.reported = me.reported.Add(ts.Used)
			t.committed = t.committed.Add(ts.Used)
			for _, r := range leasedResources {
				if ret := ts.Return.Get(r); ret > 0 {
					unused := max(0, me.allowance.Get(r)-me.reported.Get(r))
					me.allowance.Set(r, me.reported.Get(r)+max(0, unused-ret))
				}
			}
			for _, r := range leasedResources {
				lim, want := ts.Limit.Get(r), ts.Want.Get(r)
				if lim <= 0 || want <= 0 {
					continue
				}
				held := t.committed.Get(r)
				for _, o := range t.replicas {
					held += max(0, o.allowance.Get(r)-o.reported.Get(r))
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
			me.expires = now.Add(req.LeaseTTL)
		}
		for _, r := range leasedResources {
			if me.allowance.Get(r) < me.reported.Get(r) {
				me.allowance.Set(r, me.reported.Get(r))
			}
		}
		if req.Final {
			me.allowance = me.reported
		}
		resp.Tenants[k] = TenantState{Tenant: ts.Tenant, Committed: t.committed, Reported: me.reported, Allowance: me.allowance, Seq: me.seq}
	}
	return resp, nil
}
