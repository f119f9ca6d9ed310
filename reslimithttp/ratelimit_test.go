package reslimithttp_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimithttp"
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
	assert.Equal(t, `"evaluations";r=9`, rec.Header().Get("RateLimit"), "1 of 10 evaluations used; no reset time: no t")

	// 30 operations of 100 leave 70%, less than 8 evaluations of 10 (80%).
	rec = do(t, h, http.MethodGet, "/ops", "acme", nil)
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, `"evaluation_rate";q=10;w=5, "operations";q=100`, rec.Header().Get("RateLimit-Policy"))
	assert.Equal(t, `"operations";r=70`, rec.Header().Get("RateLimit"))

	// A handler that writes nothing: the server sends the headers set.
	// 7 evaluations of 10 left and 70 operations of 100: a tie, which the
	// evaluations win.
	rec = do(t, h, http.MethodGet, "/silent", "acme", nil)
	assert.Equal(t, `"evaluations";r=7`, rec.Header().Get("RateLimit"))

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

// A refusal by the evaluation rate says the tokens left and the seconds
// until one is back; a quota's t comes from WithResetTime.
func TestRateLimitHeadersRefusalAndReset(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{EvaluationsPerSecond: 0.5})
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{})(http.HandlerFunc(rateLimitHandler))
	rec := do(t, h, http.MethodGet, "/", "acme", nil)
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, `"evaluation_rate";q=1;w=2`, rec.Header().Get("RateLimit-Policy"))
	assert.Empty(t, rec.Header().Values("RateLimit"), "the tokens left are known only at a refusal")
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
