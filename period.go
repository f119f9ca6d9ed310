package reslimit

import (
	"time"
)

// Period is one closed billing period of one tenant: what its runs were
// charged from Start to End (an invoice line). Every unit a run is
// charged lands in exactly one period, the one open when it was charged,
// also while runs are going when the period closes.
type Period struct {
	// Tenant is the account's name.
	Tenant string
	// Number is the period's number: 1 for an account's first period,
	// one more at every close. A ledger numbers its periods itself (see
	// Ledger.ClosePeriod), and every account it opens takes its number.
	Number uint64
	// Start and End bound the period: End is when it was closed.
	Start, End time.Time
	// Totals are the cumulative quantities charged in the period:
	// operations, calls, bytes charged (TotalMemory), CPU time and
	// evaluations (runs started).
	Totals
	// PeakMemoryBytes is the most memory the tenant's runs held at once
	// during the period.
	PeakMemoryBytes int64
	// Final is true when the totals can no longer change. A period closed
	// on an account without a Store is always final.
	Final bool
}

// Reset closes the account's open billing period and returns its totals,
// atomically: every unit charged to the account lands in exactly one
// period, the closed one or the new one, also while runs are going (what
// a live run uses after the close counts in the new period). Reset zeroes
// the cumulative totals (so that the cumulative limits start over), the
// peak (which starts again at what is held now), the largest run, the
// history and the evaluation count, and keeps the limits, the refusal
// counts and what live runs hold at once.
//
// With a Store, the account's cumulative limits apply to the fleet-wide
// totals, which live in the store: the returned Period holds this
// replica's usage in the period, and Reset clears only this replica's
// history, peak and largest run (see Ledger.ClosePeriod for fleet-wide
// periods).
func (a *Account) Reset() Period {
	if a == nil {
		return Period{}
	}
	return a.closePeriod(time.Now(), 0)
}

// closePeriod closes the open period at end and opens period next (the
// open one's number plus one when next is 0).
func (a *Account) closePeriod(end time.Time, next uint64) Period {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := Period{Tenant: a.name, Number: a.periodNo, Start: a.periodStart, End: end, Final: true}
	if p.Start.IsZero() || p.Start.After(end) {
		p.Start = end
	}
	var meters [numMeters]int64
	for i := range numMeters {
		// Freeze every live run's meter (its unused room, and its child
		// runs', comes back), so that its usage cannot move while it is
		// split between the periods; its next charge takes the slow path,
		// which waits for a.mu and counts in the new period.
		for t := range a.live {
			t.reclaimChildren(i)
			t.revoke(i)
		}
		meters[i] = a.committed[i]
		for t := range a.live {
			u := t.used(i)
			meters[i] = satAdd(meters[i], u-t.base[i])
			t.base[i] = u
		}
		a.committed[i] = 0
		a.reserved[i] = 0 // no live run holds room, nothing committed
	}
	cpu := a.cpu
	for t := range a.live {
		// cpuLast only grows and is sampled without a.mu: read it once.
		c := t.cpuLast.Load()
		cpu = satAddDur(cpu, time.Duration(c-t.cpuBase))
		t.cpuBase = c
	}
	p.Operations, p.Calls, p.TotalMemory = meters[mOps], meters[mCalls], meters[mTotal]
	p.CPUTime = cpu
	p.Evaluations = a.evals
	p.PeakMemoryBytes = a.peak.Swap(a.held.Load())
	a.cpu = 0
	a.evals = 0
	a.largest = Largest{}
	clear(a.hist)
	a.histNext, a.histLen = 0, 0
	if next == 0 {
		next = a.periodNo + 1
	}
	a.periodNo, a.periodStart = next, end
	return p
}
