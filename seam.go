package reslimit

// The fleet seam: how an account and its store-backed state (fleetState,
// fleet.go) depend on each other, in both directions.
//
//   - The account consults its quota (the fleet side) only where a Store
//     changes what it decides; without a Store an account has no quota
//     (nil), and its cumulative limits are decided in this process alone
//     (Account.localRoomLocked).
//   - The fleet code (fleet.go, fleet_rate.go) reads and changes its
//     account through fleetAccount (the account side) only, never through
//     the Account's fields: what the store is told, the limits and usage a
//     lease is sized by, and the few things a sync answer does to the
//     account (close its period, take back its runs' room).
//
// Methods named ...Locked, on either side, are called with the account's
// mu held.

import (
	"time"

	"github.com/reslimit/reslimit/store"
)

// quota decides an account's cumulative limits fleet-wide, with a Store:
// *fleetState, which holds leases of the fleet's quota and reports usage.
// An account without a Store has none (nil).
type quota interface {
	// errLocked returns why the account may grant nothing more (ErrClosed
	// after its ledger made its final report), or nil.
	errLocked() error
	// unboundLocked reports whether no cumulative limit binds now (a store
	// that fails under FailOpen).
	unboundLocked() bool
	// runBegunLocked is told that a run began, and runEndedLocked that
	// one ended having used used (its meters and CPU time): the life
	// totals of this process, never Reset, are kept on the fleet's side
	// (fleetState.lifeLocked).
	runBegunLocked()
	runEndedLocked(used store.Totals)
	// reserveRunLocked makes sure one more run may begin: that this
	// process holds a lease for one more evaluation (while Evaluations is
	// limited) and some CPU time (while CPUTime is). It may release the
	// account's mu while it waits for a lease.
	reserveRunLocked() error
	// cpuLeftLocked is how much more CPU time this process's runs may use
	// under its lease (maxUsage: no lease binds them).
	cpuLeftLocked() int64
	// roomLocked makes sure the account may hand want more of meter i,
	// whose limit is set, to t (for a request of n), and returns how much
	// it may hand out now: at least want, unless the limit was removed
	// while it waited (see Account.grantLocked). It may release the
	// account's mu while it waits for a lease, and may take back the
	// other live runs' room (fleetAccount.reclaimLocked).
	roomLocked(t *Tracker, i int, n, want int64) (int64, error)
	// grantedLocked is told that a grant of meter i left left of the room
	// roomLocked returned.
	grantedLocked(i int, left int64)
	// usageLocked returns the fleet-wide usage of cumulative resource r,
	// which the limit is checked against.
	usageLocked(r Resource) int64
	// statsLocked returns the state of the fleet store.
	statsLocked() *FleetStats
	// lostLocked is how much of r the store lost of this process's reports.
	lostLocked(r Resource) int64
	// periodClosedLocked is told that the account closed period n when
	// its live runs had used live (as liveUsageLocked, read once where
	// the close froze them).
	periodClosedLocked(n uint64, live store.Totals)
}

var _ quota = (*fleetState)(nil)

// fleetAccount is an account as the fleet code sees it (the seam's
// account side): *Account implements it.
type fleetAccount interface {
	// lock and unlock take and release the account's mu.
	lock()
	unlock()
	// tenant is the account's name.
	tenant() string
	// limit is the account's limit on r (0: none); it needs no lock.
	limit(r Resource) int64
	// periodLocked is the number of the account's open billing period;
	// setPeriodLocked renumbers it (a tenant new to this replica joins
	// the store's open period).
	periodLocked() uint64
	setPeriodLocked(n uint64)
	// liveUsageLocked is what the account's live runs used of the
	// quantities the store is told (their meters and CPU time; a run's
	// evaluation counts when it begins): fleetState.lifeLocked adds it
	// to what the ended runs used.
	liveUsageLocked() store.Totals
	// liveIssuedLocked is the room of r (a meter's resource) the
	// account's live runs were given in all (0 for another resource).
	liveIssuedLocked(r Resource) int64
	// usageLocked is the account's usage of r (fleet-wide for the
	// cumulative ones).
	usageLocked(r Resource) int64
	// runningLocked is the number of the account's live runs.
	runningLocked() int
	// refuseLocked counts a refusal of a request of n of r, whose limit
	// lim has used of it used, and returns the *LimitError.
	refuseLocked(r Resource, lim, used, n int64) error
	// reclaimLocked takes back the unused room of meter i from every live
	// run but except.
	reclaimLocked(i int, except *Tracker)
	// drainLocked takes back the room of every live run, so that each
	// run's next charge takes the slow path (and finds ErrClosed).
	drainLocked()
	// closePeriodLocked closes the open period at end and opens period
	// next (see Account.closePeriod).
	closePeriodLocked(end time.Time, next uint64) Period
	// fleetRatesLocked returns the account's fleet-wide rates (nil for none).
	fleetRatesLocked() [2]*fleetRate
	// opCreditLocked is the operation rate's credit: tokens taken already,
	// as room runs gave back unused.
	opCreditLocked() int64
}

var _ fleetAccount = (*Account)(nil)

func (a *Account) lock()                    { a.mu.Lock() }
func (a *Account) unlock()                  { a.mu.Unlock() }
func (a *Account) tenant() string           { return a.name }
func (a *Account) limit(r Resource) int64   { return a.limits[r].Load() }
func (a *Account) periodLocked() uint64     { return a.mu.periodNo }
func (a *Account) setPeriodLocked(n uint64) { a.mu.periodNo = n }
func (a *Account) runningLocked() int       { return len(a.mu.live) }

func (a *Account) refuseLocked(r Resource, lim, used, n int64) error {
	a.refused[r].Add(1)
	return &LimitError{Resource: r, Limit: lim, Used: used, Requested: n, Tenant: a.name}
}

func (a *Account) drainLocked() {
	for t := range a.mu.live {
		for i := range numMeters {
			t.revoke(i)
		}
	}
}

func (a *Account) liveUsageLocked() store.Totals {
	var l store.Totals
	for t := range a.mu.live {
		l.CPUTime = satAddDur(l.CPUTime, time.Duration(t.cpuLast.Load()))
	}
	for i, r := range meterResource {
		var v int64
		for t := range a.mu.live {
			v = satAdd(v, t.consumed(i))
		}
		tset(&l, r, v)
	}
	return l
}

func (a *Account) liveIssuedLocked(r Resource) int64 {
	var v int64
	for i, mr := range meterResource {
		if mr != r {
			continue
		}
		for t := range a.mu.live {
			t.meterMu.Lock()
			v = satAdd(v, t.filled[i].Load())
			t.meterMu.Unlock()
		}
	}
	return v
}

// fleetState returns the account's store-backed state, or nil without a
// Store.
func (a *Account) fleetState() *fleetState {
	f, _ := a.quota.(*fleetState)
	return f
}

func (a *Account) opCreditLocked() int64 { return a.mu.rates.opCredit }

// fleetRatesLocked returns the account's fleet-wide rates (nil for none).
func (a *Account) fleetRatesLocked() [2]*fleetRate {
	var out [2]*fleetRate
	out[0], _ = a.mu.rates.evals.(*fleetRate)
	out[1], _ = a.mu.rates.ops.(*fleetRate)
	return out
}
