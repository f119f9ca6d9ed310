package reslimit

import (
	"fmt"
	"math"
	"time"

	"golang.org/x/time/rate"
)

// Rates.
//
// An account's rates (AccountLimits.EvaluationsPerSecond,
// OperationsPerSecond) are token buckets: of golang.org/x/time/rate in a
// ledger without a Store (or WithPerProcessRates), and with a Store one
// bucket per tenant in the store for the whole fleet, from which each
// replica leases tokens in batches (fleetRate, in fleet_rate.go).
//
// The evaluation rate takes one token per run started, in Begin (from a
// local bucket in small batches: see takeEvaluationLocked). The
// operation rate is charged where the account's cumulative limits are:
// when a run's room of operations is refilled (grant), not on the hot
// path. A grant takes tokens for what the run asks now plus a chunk
// ahead, as far as the bucket has tokens (the chunk is what keeps the
// hot path one CAS); room a run gives back unused (at End, when the
// account reclaims it, at a close) goes to the account's credit, which
// later grants use before the bucket. So every operation counted took a
// token once, a refusal comes only when the bucket and every run's unused
// room together cannot cover the request, and the bucket can pass its
// burst by at most the credit, itself at most one burst.

// tokenBucket is where an account's rate takes tokens: a local
// *rate.Limiter or a replica's lease of the fleet's bucket (*fleetRate).
type tokenBucket interface {
	TokensAt(now time.Time) float64
	AllowN(now time.Time, n int) bool
	Burst() int
	Limit() rate.Limit
}

// accountRates are an account's token buckets; guarded by Account.mu.
type accountRates struct {
	evals, ops             tokenBucket // nil: no rate
	evalsPerSec, opsPerSec float64
	evalBurst, opBurst     int
	opCredit               int64 // room of operations given back unused: tokens already taken
	evalCredit             int64 // evaluation tokens taken ahead, in a batch
	// fleet, when set, makes the rates fleet-wide: leases of buckets in
	// its ledger's store.
	fleet *fleetState
	// noWait: the request being decided may not wait for a lease any
	// longer (its wait for one ended).
	noWait bool
}

// bucketTokens is what lim holds now for a reading: the tokens of a local
// bucket, or for a fleet-wide rate the fleet-wide figure (the store's
// bucket by its last answer, plus this replica's lease).
func bucketTokens(lim tokenBucket, now time.Time) float64 {
	if fr, ok := lim.(*fleetRate); ok {
		return fr.fleetTokens(now)
	}
	return lim.TokensAt(now)
}

// validRate checks a rate field and its burst.
func validRate(name string, perSec float64, burstName string, burst int) []error {
	var errs []error
	if perSec < 0 || math.IsNaN(perSec) || math.IsInf(perSec, 0) {
		errs = append(errs, fmt.Errorf("%w: account limit %s is not a finite non-negative rate (%v)", ErrInvalidLimits, name, perSec))
	}
	if burst < 0 {
		errs = append(errs, fmt.Errorf("%w: account limit %s is negative (%d)", ErrInvalidLimits, burstName, burst))
	}
	return errs
}

// defaultBurst is the bucket's size for a rate with burst 0: one
// second's worth, at least 1.
func defaultBurst(perSec float64, burst int) int {
	if burst > 0 {
		return burst
	}
	return int(max(1, min(math.Ceil(perSec), math.MaxInt32)))
}

// setLocked applies the rates of l, keeping the tokens of a bucket whose
// rate stays set.
func (r *accountRates) setLocked(l AccountLimits) {
	now := time.Now()
	r.evals = r.bucket(r.evals, l.EvaluationsPerSecond, l.EvaluationBurst, now)
	r.ops = r.bucket(r.ops, l.OperationsPerSecond, l.OperationBurst, now)
	r.evalsPerSec, r.evalBurst = l.EvaluationsPerSecond, l.EvaluationBurst
	r.opsPerSec, r.opBurst = l.OperationsPerSecond, l.OperationBurst
	if r.ops == nil {
		r.opCredit = 0
	} else {
		r.opCredit = min(r.opCredit, int64(r.ops.Burst()))
	}
	if r.evals == nil {
		r.evalCredit = 0
	} else {
		r.evalCredit = min(r.evalCredit, int64(r.evals.Burst())/16)
	}
}

// bucket returns the bucket of a rate of perSec with burst, b updated
// (nil for no rate).
func (r *accountRates) bucket(b tokenBucket, perSec float64, burst int, now time.Time) tokenBucket {
	if perSec == 0 {
		return nil
	}
	n := defaultBurst(perSec, burst)
	if r.fleet != nil {
		fr, _ := b.(*fleetRate)
		if fr == nil {
			fr = &fleetRate{f: r.fleet}
		}
		fr.perSec, fr.burst = perSec, int64(n)
		fr.lease = min(fr.lease, fr.burst)
		return fr
	}
	lim, _ := b.(*rate.Limiter)
	if lim == nil {
		return rate.NewLimiter(rate.Limit(perSec), n)
	}
	lim.SetLimitAt(now, rate.Limit(perSec))
	lim.SetBurstAt(now, n)
	return lim
}

// rateError is the refusal of a request of n that needs need tokens from
// lim, which has tokens now.
func (a *Account) rateError(res Resource, lim tokenBucket, tokens float64, n, need int64) *LimitError {
	a.refused[res].Add(1)
	burst := int64(lim.Burst())
	fr, fleet := lim.(*fleetRate)
	if fleet {
		fr.asked += need
		tokens = fr.fleetTokens(time.Now())
	}
	e := &LimitError{Resource: res, Limit: burst, Used: burst - max(0, min(burst, int64(tokens))), Requested: n, Tenant: a.name}
	if need <= burst {
		if fleet {
			e.RetryAfter = fr.retryAfter(time.Now(), need)
		} else {
			deficit := float64(need) - tokens
			e.RetryAfter = time.Duration(math.Ceil(deficit / float64(lim.Limit()) * 1e9))
		}
		e.RetryAfter = max(e.RetryAfter, 1)
	}
	return e
}

// takeEvaluationLocked takes the token of a run about to start now. It
// takes tokens from the bucket in batches of up to a sixteenth of the
// burst (at most 64), kept as credit, so that a busy tenant pays for the
// bucket once per batch: a window of time may see at most one batch more
// than the burst plus the rate times its length.
func (a *Account) takeEvaluationLocked(now time.Time) error {
	r := &a.mu.rates
	if r.evalCredit > 0 {
		r.evalCredit--
		return nil
	}
	lim := r.evals
	k := max(1, min(int64(lim.Burst())/16, 64))
	if fr, fleet := lim.(*fleetRate); fleet {
		if fr.lease > 0 { // the lease is local already: no batch
			fr.lease--
			fr.asked++
			return nil
		}
		k = 1
	}
	if k > 1 {
		tokens := lim.TokensAt(now)
		if tokens < 1 {
			return a.rateError(EvaluationRate, lim, tokens, 1, 1)
		}
		k = min(k, int64(tokens))
	}
	if !lim.AllowN(now, int(k)) {
		if a.rateWaitLocked(lim, now, 1) {
			return errRateWait
		}
		return a.rateError(EvaluationRate, lim, lim.TokensAt(now), 1, 1)
	}
	r.evalCredit = k - 1
	return nil
}

// rateWaitLocked decides whether a request of need that lim cannot cover
// now waits for a sync: only when lim is a fleet-wide rate that says so
// (fleetRate.waitLocked), and not once the request's wait ended.
func (a *Account) rateWaitLocked(lim tokenBucket, now time.Time, need int64) bool {
	fr, ok := lim.(*fleetRate)
	return ok && !a.mu.rates.noWait && fr.waitLocked(now, need)
}

// refundOpsLocked gives the account credit for v operations of room a run
// gave back unused.
func (a *Account) refundOpsLocked(v int64) {
	if a.mu.rates.ops != nil && v > 0 {
		most := int64(a.mu.rates.ops.Burst())
		if fr, ok := a.mu.rates.ops.(*fleetRate); ok {
			most -= fr.lease // a replica holds at most one burst of tokens
		}
		a.mu.rates.opCredit = min(a.mu.rates.opCredit+v, max(most, 0))
	}
}

// takeOpsLocked takes tokens for a grant of operations to t that needs
// want (for a request of n) and may be g: it returns the grant the credit
// and the bucket cover, at least want, or the OperationRate refusal (which
// changes nothing).
func (a *Account) takeOpsLocked(t *Tracker, n, want, g int64) (int64, error) {
	r := &a.mu.rates
	if r.opCredit >= g {
		r.opCredit -= g
		return g, nil
	}
	lim := r.ops
	now := time.Now()
	tokens := lim.TokensAt(now)
	if float64(want-r.opCredit) > tokens {
		// Short: take back the room the other runs have not used.
		for o := range a.mu.live {
			if o != t {
				o.reclaimChildren(mOps)
				v := o.revoke(mOps)
				if a.limits[Operations].Load() > 0 {
					a.mu.reserved[mOps] -= v
				}
				r.opCredit += v
			}
		}
		if r.opCredit >= g {
			r.opCredit -= g
			return g, nil
		}
		if need := want - r.opCredit; float64(need) > tokens {
			if a.rateWaitLocked(lim, now, need) {
				return 0, errRateWait
			}
			err := a.rateError(OperationRate, lim, tokens, n, need)
			r.opCredit = min(r.opCredit, int64(lim.Burst()))
			return 0, err
		}
	}
	take := min(g-r.opCredit, int64(tokens)) // at least want - credit
	if take > 0 && !lim.AllowN(now, int(take)) {
		// Cannot happen: a.mu serialises the bucket's users.
		return 0, a.rateError(OperationRate, lim, lim.TokensAt(now), n, take)
	}
	g = r.opCredit + max(take, 0)
	r.opCredit = 0
	return g, nil
}
