package reslimit

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Totals are a tenant's cumulative quantities that a fleet of replicas
// shares through a Store: operations, function calls, bytes charged
// (TotalMemory), CPU time and evaluations.
type Totals struct {
	Operations    int64
	FunctionCalls int64
	TotalMemory   int64 // bytes
	CPUTime       time.Duration
	Evaluations   int64
}

// Add returns t + u, field by field.
func (t Totals) Add(u Totals) Totals {
	return Totals{t.Operations + u.Operations, t.FunctionCalls + u.FunctionCalls,
		t.TotalMemory + u.TotalMemory, t.CPUTime + u.CPUTime, t.Evaluations + u.Evaluations}
}

// Sub returns t - u, field by field.
func (t Totals) Sub(u Totals) Totals {
	return Totals{t.Operations - u.Operations, t.FunctionCalls - u.FunctionCalls,
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
		return t.FunctionCalls
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
		t.FunctionCalls = v
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
	// resource (Operations, FunctionCalls, TotalMemory, Evaluations).
	Want Totals
	// Limit is the tenant's cumulative limits (0 = no limit); the store
	// never grants allowance past them, fleet-wide.
	Limit Totals
}

// SyncRequest is one replica's batched report of many tenants' usage and
// its request for leases.
type SyncRequest struct {
	Replica string
	// LeaseTTL is how long the allowance granted now stays reserved for the
	// replica without another sync; after it the store may reclaim what the
	// replica has not reported as used.
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
	// leased resource. It grows with grants and falls back to Reported
	// when the replica's lease expires or it syncs with Final.
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
// is. For each leased resource with a limit it grants the replica up to
// Want more, never letting the sum over replicas of max(Allowance,
// Reported), plus what expired replicas reported, pass the limit. It first
// reclaims the unused allowance of replicas whose lease expired, by the
// store's own clock.
type Store interface {
	Sync(ctx context.Context, req SyncRequest) (SyncResponse, error)
	// Load returns a tenant's committed fleet-wide totals.
	Load(ctx context.Context, tenant string) (Totals, error)
}

// MemoryStore is the in-process Store: a ledger without WithStore behaves
// as if it had one of its own. It is safe for concurrent use and is useful
// to share between ledgers in one process (and in tests).
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
	now := s.now()
	resp := SyncResponse{Tenants: make([]TenantState, len(req.Tenants))}
	for k, ts := range req.Tenants {
		t := s.tenants[ts.Tenant]
		if t == nil {
			t = &memTenant{replicas: make(map[string]*memReplica)}
			s.tenants[ts.Tenant] = t
		}
		for id, r := range t.replicas { // reclaim expired leases
			if id != req.Replica && now.After(r.expires) {
				r.allowance = r.reported
			}
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
				lim, want := ts.Limit.Get(r), ts.Want.Get(r)
				if lim <= 0 || want <= 0 {
					continue
				}
				held := t.committed.Get(r)
				for _, o := range t.replicas {
					held += max(0, o.allowance.Get(r)-o.reported.Get(r))
				}
				grant := min(want, lim-held)
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
