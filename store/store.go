// Package store is the protocol between a reslimit.Ledger and the store
// that a fleet of replicas shares: what a replica reports (SyncRequest),
// what the store answers (SyncResponse), the Store interface and the
// optional PeriodLoader and TenantLister, and Memory, the in-process
// reference implementation. Users of reslimit pass a Store to
// reslimit.WithStore and need nothing else here; implementers of a store
// (contrib/redisstore is one) prove it with package storetest, as
// database/sql drivers implement database/sql/driver.
package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"
)

// ErrInvalidArgument is wrapped by the errors of a Sync or load given bad
// input (a report without a replica id, periods out of order). It is
// reslimit.ErrInvalidArgument.
var ErrInvalidArgument = errors.New("reslimit: invalid argument")

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

// quantity names a field of Totals, for the code that treats them alike.
type quantity int

const (
	qOps quantity = iota
	qCalls
	qMem
	qCPU
	qEvals
)

// leased are the quantities a replica needs an allowance (lease) for
// before it hands them out: all of them. CPU time, measured after it is
// spent, is leased too: a replica stops its tenant's runs when their CPU
// time passes its lease and the store has no more to give.
var leased = [...]quantity{qOps, qCalls, qMem, qEvals, qCPU}

func (t Totals) get(q quantity) int64 {
	switch q {
	case qOps:
		return t.Operations
	case qCalls:
		return t.Calls
	case qMem:
		return t.TotalMemory
	case qCPU:
		return int64(t.CPUTime)
	case qEvals:
		return t.Evaluations
	}
	return 0
}

func (t *Totals) set(q quantity, v int64) {
	switch q {
	case qOps:
		t.Operations = v
	case qCalls:
		t.Calls = v
	case qMem:
		t.TotalMemory = v
	case qCPU:
		t.CPUTime = time.Duration(v)
	case qEvals:
		t.Evaluations = v
	}
}

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
	// keeps periods marks those periods lost (Period.Lost), never
	// final. The replica reports again what it had reported for its open
	// period, but never bills a closed period's usage to another period.
	LostBefore uint64
	// EvaluationRate and OperationRate ask for tokens of the tenant's
	// fleet-wide rates (token buckets the store keeps; see Rate).
	EvaluationRate, OperationRate Rate
}

// Rate is a replica's request of tokens from one of a tenant's fleet-wide
// rates: a token bucket the store keeps per tenant, which refills at
// PerSecond tokens a second by the store's clock up to Burst tokens (a
// bucket the store has not seen starts full). An applied report first
// puts Return back in the bucket (never past Burst), then takes up to
// Want tokens out of it, as many whole tokens as it holds, for the
// replica to hand out itself (a lease). Tokens taken are never put back
// except by a Return: a replica that stops without giving its lease back
// strands it, which only ever lowers what the fleet grants. PerSecond 0
// means no fleet-wide rate: the bucket is left as it is. Rates do not
// depend on billing periods.
type Rate struct {
	PerSecond float64 // tokens a second; finite, not negative
	Burst     int64   // the bucket's size in tokens; at least 1 with a rate
	Want      int64   // tokens asked for; not negative
	Return    int64   // tokens of an earlier lease not used, given back; not negative
}

// Validate returns an error for a rate request with a rate that is not
// finite and non-negative, a negative Want or Return, or a Burst below 1
// with a rate: stores refuse such a report (wrapping ErrInvalidArgument).
func (r Rate) Validate() error {
	switch {
	case r.PerSecond < 0 || math.IsNaN(r.PerSecond) || math.IsInf(r.PerSecond, 0):
		return fmt.Errorf("rate %v a second is not finite and non-negative", r.PerSecond)
	case r.Want < 0 || r.Return < 0:
		return fmt.Errorf("rate want %d or return %d is negative", r.Want, r.Return)
	case r.PerSecond > 0 && r.Burst < 1:
		return fmt.Errorf("rate burst %d is less than 1", r.Burst)
	}
	return nil
}

// RefillTokens returns the tokens of a bucket that held tokens elapsed
// ago and refills at perSec tokens a second up to burst: what a store
// computes when a report comes, and a replica when it estimates the
// bucket of the store's last answer.
func RefillTokens(tokens float64, elapsed time.Duration, perSec float64, burst int64) float64 {
	if elapsed > 0 {
		tokens += elapsed.Seconds() * perSec
	}
	return min(tokens, float64(burst))
}

// RateState is the store's answer about one of a tenant's fleet-wide rates.
type RateState struct {
	// Granted is the tokens taken out of the bucket for the replica by this
	// report (0 for a report not applied now: a retry, a stale one).
	Granted int64
	// Tokens is what the bucket holds after the grant, at the store's time
	// of the answer (0 without a rate); the replica estimates it later by
	// adding PerSecond tokens a second, up to Burst.
	Tokens float64
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
	// EvaluationRate and OperationRate answer the report's Rate requests.
	EvaluationRate, OperationRate RateState
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
// bound in docs/fleet.md of the reslimit repository).
type Store interface {
	Sync(ctx context.Context, req SyncRequest) (SyncResponse, error)
	// Load returns a tenant's committed fleet-wide totals.
	Load(ctx context.Context, tenant string) (Totals, error)
}

// Period is a tenant's fleet-wide totals for one billing period, as
// a PeriodLoader reads them.
type Period struct {
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
// Redis store and Memory do).
type PeriodLoader interface {
	// LoadPeriod returns a tenant's committed totals for a period.
	LoadPeriod(ctx context.Context, tenant string, period uint64) (Period, error)
}

// TenantLister is implemented by stores that can list every tenant they
// hold (the Redis store and Memory do), for fleet-wide invoices.
type TenantLister interface {
	// ListTenants calls fn with each tenant the store holds and its
	// committed totals, in no particular order, without holding them all
	// in memory at once, and stops at fn's first error, which it returns.
	// A tenant synced while the listing runs may be missed; one may be
	// listed twice (see the store's documentation).
	ListTenants(ctx context.Context, fn func(tenant string, committed Totals) error) error
}
