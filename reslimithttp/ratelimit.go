package reslimithttp

import (
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/internal/resinfo"
)

// RateLimit headers (draft-ietf-httpapi-ratelimit-headers, the structured
// field form): on every response to a request of a known tenant, the
// middleware describes the tenant's binding rate and quota.
//
//	RateLimit-Policy: "evaluation_rate";q=10;w=5, "evaluations";q=1000
//	RateLimit: "evaluations";r=991;t=3600
//
// The rate is EvaluationsPerSecond: q is its burst and w the seconds the
// bucket takes to refill (burst/rate, rounded up). Its RateLimit item
// says the tokens left (r, from the account's reading of the bucket: with
// a store, the fleet-wide figure) and t, the seconds until the bucket is
// full again, or, with the refusal of the request by that rate, until a
// retry can succeed (its RetryAfter, rounded up). The quota is the
// cumulative limit (evaluations, operations, calls, cpu_time,
// total_memory) with the least remaining fraction: q its limit and w the
// billing period's length in seconds when the ledger has a schedule; r
// what remains, in its unit (whole bytes, counts or seconds, rounded
// down), and t the seconds until it resets when WithResetTime knows it.

// Names of the RateLimit header fields.
const (
	headerRateLimitPolicy = "RateLimit-Policy"
	headerRateLimit       = "RateLimit"
)

// quotaResources are the cumulative limits the quota is chosen from, in
// the order that breaks ties.
var quotaResources = [...]reslimit.Resource{
	reslimit.Evaluations, reslimit.Operations, reslimit.Calls, reslimit.CPUTime, reslimit.TotalMemory,
}

// setRateLimitHeaders sets the RateLimit-Policy and RateLimit fields of h
// for acct, the account of tenant, now; refusal is the request's refusal,
// if any.
func setRateLimitHeaders(h http.Header, acct *reslimit.Account, reset func(string) time.Time, refusal error, now time.Time) {
	var policy, state []string
	l := acct.Limits()
	if l.EvaluationsPerSecond > 0 {
		burst := l.EvaluationBurst
		if burst <= 0 {
			burst = int(max(1, min(math.Ceil(l.EvaluationsPerSecond), math.MaxInt32)))
		}
		w := int64(max(1, math.Ceil(float64(burst)/l.EvaluationsPerSecond)))
		policy = append(policy, sfItem(reslimit.EvaluationRate.String(), "q", int64(burst), "w", w))
		state = append(state, rateItem(acct, l.EvaluationsPerSecond, refusal))
	}
	if hasQuota(l) {
		st := acct.Stats()
		best, found := reslimit.Resource(0), false
		var bestFrac float64
		for _, r := range quotaResources {
			ls, ok := st.LimitStatus[r]
			if !ok || ls.Limit <= 0 {
				continue
			}
			frac := float64(ls.Remaining) / float64(ls.Limit)
			if !found || frac < bestFrac {
				best, bestFrac, found = r, frac, true
			}
		}
		if found {
			ls := st.LimitStatus[best]
			name := best.String()
			pol := sfItem(name, "q", baseInt(best, ls.Limit))
			if !st.PeriodEnd.IsZero() && st.PeriodEnd.After(st.PeriodStart) {
				pol += ";w=" + strconv.FormatInt(int64(math.Ceil(st.PeriodEnd.Sub(st.PeriodStart).Seconds())), 10)
			}
			policy = append(policy, pol)
			item := sfItem(name, "r", baseInt(best, ls.Remaining))
			if reset != nil {
				if at := reset(acct.Name()); !at.IsZero() && at.After(now) {
					item += ";t=" + strconv.FormatInt(int64(math.Ceil(at.Sub(now).Seconds())), 10)
				}
			}
			state = append(state, item)
		}
	}
	if len(policy) > 0 {
		h.Set(headerRateLimitPolicy, strings.Join(policy, ", "))
	}
	if len(state) > 0 {
		h.Set(headerRateLimit, strings.Join(state, ", "))
	}
}

// rateItem is the RateLimit item of the evaluation rate (perSec a
// second): the tokens left by the account's reading and the seconds until
// the bucket is full, or with the rate's refusal of the request until a
// retry can succeed.
func rateItem(acct *reslimit.Account, perSec float64, refusal error) string {
	var buf [16]reslimit.Reading
	var left, burst int64
	for _, rd := range acct.AppendReadings(buf[:0]) {
		if rd.Resource == reslimit.EvaluationRate {
			left, burst = max(0, rd.Limit-rd.Used), rd.Limit
		}
	}
	t := int64(math.Ceil(float64(burst-left) / perSec))
	var le *reslimit.LimitError
	if errors.As(refusal, &le) && le.Resource == reslimit.EvaluationRate {
		left, t = max(0, le.Limit-le.Used), 0
		if le.RetryAfter > 0 {
			t = int64(wholeSeconds(le.RetryAfter) / time.Second)
		}
	}
	return sfItem(reslimit.EvaluationRate.String(), "r", left, "t", t)
}

// hasQuota reports whether l sets one of the quotaResources.
func hasQuota(l reslimit.AccountLimits) bool {
	return l.MaxEvaluations > 0 || l.MaxTotalOperations > 0 || l.MaxCalls > 0 || l.MaxCPUTime > 0 || l.MaxTotalMemory > 0
}

// baseInt is v, in r's unit, in r's base unit rounded down (whole seconds
// for CPU time), as a structured field integer.
func baseInt(r reslimit.Resource, v int64) int64 {
	return int64(math.Floor(resinfo.BaseValue(r, v)))
}

// sfItem is the structured field item "name";k1=v1;k2=v2... (name is a
// resource name: no character needs escaping).
func sfItem(name string, kv ...any) string {
	var b strings.Builder
	b.WriteString(strconv.Quote(name))
	for i := 0; i+1 < len(kv); i += 2 {
		b.WriteByte(';')
		b.WriteString(kv[i].(string))
		b.WriteByte('=')
		b.WriteString(strconv.FormatInt(kv[i+1].(int64), 10))
	}
	return b.String()
}
