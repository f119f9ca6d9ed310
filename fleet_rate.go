package reslimit

// Fleet-wide rates: with a Store, each of a tenant's rates is one token
// bucket in the store for the whole fleet. A replica hands out tokens from
// a lease it takes from that bucket with the syncs it makes anyway; when
// the lease runs out, a request waits for the syncer only if the store's
// bucket, as estimated from its last answer, holds a batch worth asking
// for, and is refused at once (with a RetryAfter from that estimate)
// otherwise. So a tenant at its rate costs the store about one call per
// replica per batch, never one per request.
//
// Bounds (docs/fleet.md). Tokens leave the store's bucket only as leases,
// and the bucket holds at most Burst and refills at PerSecond, so in any
// window of length t the fleet hands out at most Burst + PerSecond·t plus
// the tokens its replicas held at the window's start. A replica holds at
// most one Burst (its lease and the operations credit together; a lease
// asked for is what the replica's own traffic takes in a sync interval,
// at most a Burst, and it gives back what it did not use once idle for
// an interval). A replica that takes all of a tenant's traffic asks for a
// Burst (or its interval's worth) whenever the bucket has refilled that
// much, and so gets the whole rate.

import (
	"errors"
	"math"
	"time"

	"golang.org/x/time/rate"

	"github.com/reslimit/reslimit/store"
)

// errRateWait tells Begin or a grant that a rate's lease is on its way:
// wait for the sync, then decide again.
var errRateWait = errors.New("reslimit: waiting for a rate lease")

// fleetRate is this replica's share of one of a tenant's fleet-wide rates
// (a tokenBucket); guarded by the account's mu.
type fleetRate struct {
	f      *fleetState
	perSec float64
	burst  int64
	lease  int64 // tokens leased from the store and not handed out
	// tokens is the store's bucket after its last answer, received at at
	// (zero: no answer yet, the bucket is taken as full).
	tokens float64
	at     time.Time
	asked  int64 // tokens requests asked for since the last report (taken or refused)
	need   int64 // the most a waiting request needs, since the last report
	batch  int64 // the lease the last report aimed at (at least 1)
	// idleSince is when a report first found no request since the last
	// one (zero while requests come); idle for an interval, the lease
	// goes back to the store.
	idleSince time.Time
	// fallback is the bucket of a FailLocal outage (nil otherwise).
	fallback *rate.Limiter
}

var _ tokenBucket = (*fleetRate)(nil)

// failing returns the failure policy that rules while the store fails,
// and false while it answers.
func (fr *fleetRate) failing() (FailurePolicy, bool) {
	if !fr.f.failing {
		return "", false
	}
	return fr.f.ledger.fleet.policy, true
}

// TokensAt is what the replica may hand out now without the store.
func (fr *fleetRate) TokensAt(now time.Time) float64 {
	t := float64(fr.lease)
	if p, failing := fr.failing(); failing {
		switch p {
		case FailOpen:
			return math.MaxInt32
		case FailLocal:
			if fr.fallback != nil {
				t += fr.fallback.TokensAt(now)
			}
		}
	}
	return t
}

// AllowN hands out n tokens from the lease (or the outage's fallback).
func (fr *fleetRate) AllowN(now time.Time, n int) bool {
	k := int64(n)
	if k <= fr.lease {
		fr.lease -= k
		fr.asked += k
		return true
	}
	if p, failing := fr.failing(); failing {
		if p == FailOpen || (p == FailLocal && fr.fallback != nil && fr.fallback.AllowN(now, int(k-fr.lease))) {
			fr.lease = 0
			fr.asked += k
			return true
		}
	}
	return false
}

func (fr *fleetRate) Burst() int        { return int(fr.burst) }
func (fr *fleetRate) Limit() rate.Limit { return rate.Limit(fr.perSec) }

// estimate is the store's bucket now, by its last answer.
func (fr *fleetRate) estimate(now time.Time) float64 {
	if fr.at.IsZero() {
		return float64(fr.burst)
	}
	return store.RefillTokens(fr.tokens, now.Sub(fr.at), fr.perSec, fr.burst)
}

// fleetTokens is the fleet-wide figure: what the store's bucket holds by
// its last answer, plus this replica's lease.
func (fr *fleetRate) fleetTokens(now time.Time) float64 {
	return min(float64(fr.burst), float64(fr.lease)+fr.estimate(now))
}

// threshold is what the store's bucket and the lease must hold before a
// request of need asks the store: a batch, so that a tenant at its rate
// costs a call per batch, not one per token.
func (fr *fleetRate) threshold(need int64) int64 {
	return max(need, min(max(fr.batch, 1), fr.burst))
}

// retryAfter is when a request of need (at most the burst) refused now
// can succeed if no one else takes the tokens: when the store's bucket
// holds the threshold, by the estimate; while the store fails, at the
// syncer's next try (or the fallback's refill).
func (fr *fleetRate) retryAfter(now time.Time, need int64) time.Duration {
	if p, failing := fr.failing(); failing {
		if p == FailLocal && fr.fallback != nil {
			deficit := float64(need-fr.lease) - fr.fallback.TokensAt(now)
			return time.Duration(math.Ceil(deficit / float64(fr.fallback.Limit()) * 1e9))
		}
		return fr.f.ledger.fleet.interval / 4
	}
	deficit := float64(fr.threshold(need)) - float64(fr.lease) - fr.estimate(now)
	if deficit <= 0 {
		// The store has the tokens by the estimate, but they did not come
		// in time: at the syncer's next round.
		return fr.f.ledger.fleet.interval / 4
	}
	return time.Duration(math.Ceil(deficit / fr.perSec * 1e9))
}

// waitLocked decides whether a request of need that the replica cannot
// cover now waits for a sync (see Account.rateWaitLocked): when the
// store's bucket, by the estimate, holds the threshold (the syncer is
// asked at once); not while the store fails.
func (fr *fleetRate) waitLocked(now time.Time, need int64) bool {
	if need > fr.burst {
		return false
	}
	if _, failing := fr.failing(); failing {
		return false
	}
	if float64(fr.lease)+fr.estimate(now) < float64(fr.threshold(need)) {
		return false
	}
	fr.need = max(fr.need, need)
	f := fr.f
	f.rateAsk, f.wantSync = true, true
	f.ledger.kickSyncer()
	return true
}

// rateWaiter is a request's wait for a rate lease (see errRateWait).
type rateWaiter struct {
	deadline time.Time
	expired  bool
}

// wait waits, with the account's mu held (released meanwhile), for the
// next sync of f's tenant, up to WithLeaseWait in all; once that passed
// it waits no more and the request decides without waiting.
func (w *rateWaiter) wait(f *fleetState) {
	now := time.Now()
	if w.deadline.IsZero() {
		w.deadline = now.Add(f.ledger.fleet.leaseWait)
	}
	left := w.deadline.Sub(now)
	if left <= 0 {
		w.expired = true
		return
	}
	ch := f.refreshed
	f.acct.unlock()
	timer := time.NewTimer(left)
	select {
	case <-ch:
	case <-timer.C:
	}
	timer.Stop()
	f.acct.lock()
}

// rateRequestLocked sets what ts asks for of the tenant's fleet-wide
// rates and gives back: a batch sized to this replica's recent traffic
// (its demand since the last report, over at least a quarter interval,
// scaled to an interval; at least 1, at most the burst, and at
// least what a waiting request needs) less the lease it holds, or, after
// an interval without a request (or at Close), the whole lease back.
func (f *fleetState) rateRequestLocked(ts *store.TenantSync, now time.Time) {
	interval := f.ledger.fleet.interval
	elapsed := interval
	if !f.lastSync.IsZero() {
		// (Demand over at least a quarter interval: a few requests in a
		// millisecond are not a thousand a second.)
		elapsed = max(now.Sub(f.lastSync), interval/4)
	}
	for i, fr := range f.acct.fleetRatesLocked() {
		if fr == nil {
			continue
		}
		rq := store.Rate{PerSecond: fr.perSec, Burst: fr.burst}
		active := fr.asked > 0 || fr.need > 0
		switch {
		case active:
			fr.idleSince = time.Time{}
		case fr.idleSince.IsZero():
			fr.idleSince = now
		}
		switch {
		case f.ledger.fleet.closed.Load():
			rq.Return, fr.lease = fr.lease, 0 // Close: the lease goes back
		case active:
			perInterval := math.Ceil(float64(fr.asked) * float64(interval) / float64(elapsed))
			fr.batch = max(1, min(int64(min(perInterval, float64(fr.burst))), fr.burst))
			held := fr.lease
			if i == 1 {
				held += f.acct.opCreditLocked() // tokens taken already, as room given back
			}
			rq.Want = max(0, max(fr.batch, fr.need)-held)
		case fr.lease > 0 && now.Sub(fr.idleSince) >= interval:
			rq.Return, fr.lease = fr.lease, 0
		}
		fr.asked, fr.need = 0, 0
		if i == 0 {
			ts.EvaluationRate = rq
		} else {
			ts.OperationRate = rq
		}
	}
	f.rateAsk = false
}

// applyRatesLocked takes the store's answer about the tenant's rates,
// received at now.
func (f *fleetState) applyRatesLocked(st store.TenantState, now time.Time) {
	for i, fr := range f.acct.fleetRatesLocked() {
		if fr == nil {
			continue
		}
		rs := st.EvaluationRate
		if i == 1 {
			rs = st.OperationRate
		}
		fr.lease = min(fr.lease+rs.Granted, fr.burst)
		fr.tokens, fr.at = rs.Tokens, now
		fr.fallback = nil
	}
}

// failRatesLocked starts an outage's fallback under FailLocal: a bucket
// of a tenth of each fleet-wide rate and burst (at least 1 token), per
// replica, beside the lease it holds.
func (f *fleetState) failRatesLocked() {
	if f.ledger.fleet.policy != FailLocal {
		return
	}
	for _, fr := range f.acct.fleetRatesLocked() {
		if fr != nil && fr.fallback == nil {
			fr.fallback = rate.NewLimiter(rate.Limit(fr.perSec/10), int(max(1, fr.burst/10)))
		}
	}
}

// rateLeaseHeldLocked reports whether this replica holds tokens of a
// fleet-wide rate (which it gives back once idle).
func (f *fleetState) rateLeaseHeldLocked() bool {
	for _, fr := range f.acct.fleetRatesLocked() {
		if fr != nil && fr.lease > 0 {
			return true
		}
	}
	return false
}
