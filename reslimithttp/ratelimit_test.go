package reslimithttp_test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimithttp"
	"github.com/reslimit/reslimit/store"
)

// rateLimitHandler tracks n operations for /ops?n, and writes "ok" unless
// the path is /silent.
func rateLimitHandler(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/ops" {
		if err := reslimit.FromContext(r.Context()).TrackOperations(30); err != nil {
			reslimithttp.Error(w, r, err)
			return
		}
	}
	if r.URL.Path != "/silent" {
		okHandler(w, r)
	}
}

// Every response of a known tenant carries RateLimit-Policy and RateLimit
// for its evaluation rate and its binding quota.
func TestRateLimitHeaders(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{EvaluationsPerSecond: 2, EvaluationBurst: 10, MaxEvaluations: 10, MaxTotalOperations: 100})
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{})(http.HandlerFunc(rateLimitHandler))

	rec := do(t, h, http.MethodGet, "/", "acme", nil)
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, `"evaluation_rate";q=10;w=5, "evaluations";q=10`, rec.Header().Get("RateLimit-Policy"))
	assert.Equal(t, `"evaluation_rate";r=9;t=1, "evaluations";r=9`, rec.Header().Get("RateLimit"),
		"1 token of 10 taken: full again in 1s at 2/s; 1 of 10 evaluations used, no reset time: no t")

	// 30 operations of 100 leave 70%, less than 8 evaluations of 10 (80%).
	rec = do(t, h, http.MethodGet, "/ops", "acme", nil)
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, `"evaluation_rate";q=10;w=5, "operations";q=100`, rec.Header().Get("RateLimit-Policy"))
	assert.Equal(t, `"evaluation_rate";r=8;t=1, "operations";r=70`, rec.Header().Get("RateLimit"))

	// A handler that writes nothing: the server sends the headers set.
	// 7 evaluations of 10 left and 70 operations of 100: a tie, which the
	// evaluations win.
	rec = do(t, h, http.MethodGet, "/silent", "acme", nil)
	assert.Equal(t, `"evaluation_rate";r=7;t=2, "evaluations";r=7`, rec.Header().Get("RateLimit"))

	// No header for an unknown tenant, nor for a tenant with no rate and
	// no quota.
	rec = do(t, h, http.MethodGet, "/", "", nil)
	require.Equal(t, http.StatusUnauthorized, rec.Code)
	assert.Empty(t, rec.Header().Values("RateLimit-Policy"))
	assert.Empty(t, rec.Header().Values("RateLimit"))
	free := mustMiddleware(t, mustLedger(t, reslimit.AccountLimits{}), byHeader, reslimit.Limits{})(http.HandlerFunc(rateLimitHandler))
	rec = do(t, free, http.MethodGet, "/", "acme", nil)
	assert.Empty(t, rec.Header().Values("RateLimit-Policy"))
	assert.Empty(t, rec.Header().Values("RateLimit"))
}

// The evaluation rate's item says the tokens left and the seconds until
// the bucket is full, and at a refusal by it until one is back; a quota's
// t comes from WithResetTime, its w from the ledger's schedule.
func TestRateLimitHeadersRefusalAndReset(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{EvaluationsPerSecond: 0.5})
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{})(http.HandlerFunc(rateLimitHandler))
	rec := do(t, h, http.MethodGet, "/", "acme", nil)
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, `"evaluation_rate";q=1;w=2`, rec.Header().Get("RateLimit-Policy"))
	assert.Equal(t, `"evaluation_rate";r=0;t=2`, rec.Header().Get("RateLimit"), "the one token taken, back in 2s")
	rec = do(t, h, http.MethodGet, "/", "acme", nil)
	require.Equal(t, http.StatusTooManyRequests, rec.Code)
	assert.Equal(t, `"evaluation_rate";q=1;w=2`, rec.Header().Get("RateLimit-Policy"))
	assert.Equal(t, `"evaluation_rate";r=0;t=2`, rec.Header().Get("RateLimit"))
	assert.Equal(t, "2", rec.Header().Get("Retry-After"))

	reset := time.Now().Add(time.Hour)
	ledger = mustLedger(t, reslimit.AccountLimits{MaxCPUTime: 90 * time.Second, MaxTotalOperations: 1000})
	h = mustMiddleware(t, ledger, byHeader, reslimit.Limits{},
		reslimithttp.WithResetTime(func(string) time.Time { return reset }))(http.HandlerFunc(rateLimitHandler))
	rec = do(t, h, http.MethodGet, "/ops", "acme", nil)
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, `"operations";q=1000`, rec.Header().Get("RateLimit-Policy"), "97% of operations left, more than 99.9% of CPU time")
	assert.Equal(t, `"operations";r=970;t=3600`, rec.Header().Get("RateLimit"))

	// Exhausted CPU time: the binding quota, in whole seconds.
	require.NoError(t, ledger.Account("cpu").SetLimit(reslimit.CPUTime, int64(1500*time.Millisecond)))
	require.NoError(t, ledger.Account("cpu").SetLimit(reslimit.Operations, 0))
	rec = do(t, h, http.MethodGet, "/", "cpu", nil)
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, `"cpu_time";q=1`, rec.Header().Get("RateLimit-Policy"))
	assert.Equal(t, `"cpu_time";r=1;t=3600`, rec.Header().Get("RateLimit"))
}

// With a store the rate's item is the fleet-wide figure: what another
// replica took is not left here; and a ledger with a schedule gives the
// quota's policy its window (w, seconds).
func TestRateLimitHeadersFleetWide(t *testing.T) {
	shared := store.NewMemory()
	limits := reslimit.AccountLimits{EvaluationsPerSecond: 1e-6, EvaluationBurst: 10, MaxTotalOperations: 1000}
	replica := func(id string) http.Handler {
		l := mustLedger(t, limits, reslimit.WithStore(shared), reslimit.WithReplica(id), reslimit.WithPeriod(time.Hour))
		t.Cleanup(func() { _ = l.Close(context.Background()) })
		return mustMiddleware(t, l, byHeader, reslimit.Limits{})(http.HandlerFunc(rateLimitHandler))
	}
	a, b := replica("a"), replica("b")
	for range 5 {
		require.Equal(t, http.StatusOK, do(t, a, http.MethodGet, "/", "acme", nil).Code)
	}
	rec := do(t, b, http.MethodGet, "/", "acme", nil)
	require.Equal(t, http.StatusOK, rec.Code)
	policy := rec.Header().Get("RateLimit-Policy")
	w, ok := strings.CutPrefix(policy, `"evaluation_rate";q=10;w=10000000, "operations";q=1000;w=`)
	require.True(t, ok, policy)
	secs, err := strconv.Atoi(w)
	require.NoError(t, err, policy)
	assert.True(t, secs > 0 && secs <= 3600, "w is the open period's length (WithPeriod(time.Hour) closes on the hour): %s", policy)
	var left int64 = -1
	for _, item := range strings.Split(rec.Header().Get("RateLimit"), ", ") {
		if v, ok := strings.CutPrefix(item, `"evaluation_rate";r=`); ok {
			left, _ = strconv.ParseInt(strings.Split(v, ";")[0], 10, 64)
		}
	}
	assert.GreaterOrEqual(t, left, int64(0))
	assert.LessOrEqual(t, left, int64(4), "10 tokens fleet-wide, 5 taken on a, 1 here: at most 4 left (per process it would read 9)")
}

// The status page's snapshot shows each rate as its bucket: with a store,
// the fleet-wide figure (what another replica took is in use).
func TestSnapshotRatesFleetWide(t *testing.T) {
	shared := store.NewMemory()
	limits := reslimit.AccountLimits{EvaluationsPerSecond: 1e-6, EvaluationBurst: 10}
	var ledgers []*reslimit.Ledger
	for _, id := range []string{"a", "b"} {
		l := mustLedger(t, limits, reslimit.WithStore(shared), reslimit.WithReplica(id))
		t.Cleanup(func() { _ = l.Close(context.Background()) })
		ledgers = append(ledgers, l)
	}
	for range 3 {
		tr, err := ledgers[0].Account("acme").Begin(reslimit.Limits{})
		require.NoError(t, err)
		tr.End()
	}
	tr, err := ledgers[1].Account("acme").Begin(reslimit.Limits{})
	require.NoError(t, err)
	tr.End()
	snap := reslimithttp.TakeSnapshot(ledgers[1], nil)
	require.Len(t, snap.Tenants, 1)
	var rates []reslimithttp.LimitSnapshot
	for _, l := range snap.Tenants[0].Limits {
		if l.Resource == reslimit.EvaluationRate.String() {
			rates = append(rates, l)
		}
	}
	require.Len(t, rates, 1, "one row for the evaluation rate")
	assert.Equal(t, 10.0, rates[0].Limit, "the burst")
	assert.GreaterOrEqual(t, rates[0].Used, 4.0, "3 tokens taken on a, 1 on b: fleet-wide at least 4 in use (per process it would read 1)")
	assert.Equal(t, rates[0].Limit-rates[0].Used, rates[0].Remaining)
}
