package reslimithttp_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimithttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A tenant above its evaluation rate gets 429 with Retry-After from the
// refusal's RetryAfter (rounded up to whole seconds) and the exact wait in
// the body; above its operation rate, the same through Error.
func TestMiddlewareRateGets429WithRetryAfter(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{EvaluationsPerSecond: 0.5, OperationsPerSecond: 10})
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ops" {
			if err := reslimit.FromContext(r.Context()).TrackOperations(11); err != nil {
				reslimithttp.Error(w, r, err)
				return
			}
		}
		okHandler(w, r)
	}))
	require.Equal(t, http.StatusOK, do(t, h, http.MethodGet, "/", "acme", nil).Code)
	rec := do(t, h, http.MethodGet, "/", "acme", nil)
	require.Equal(t, http.StatusTooManyRequests, rec.Code)
	assert.Equal(t, "2", rec.Header().Get("Retry-After"), "2s at half a run per second")
	b := decodeError(t, rec)
	assert.Equal(t, "evaluation_rate", b.Resource)
	assert.Equal(t, "tenant", b.Scope)
	assert.InDelta(t, 2, b.RetryAfter, 0.1)
	assert.Contains(t, b.Message, "retry after")

	// More than the burst of operations: no wait cures it, no Retry-After.
	rec = do(t, h, http.MethodGet, "/ops", "other", nil)
	require.Equal(t, http.StatusTooManyRequests, rec.Code)
	assert.Empty(t, rec.Header().Get("Retry-After"))
	b = decodeError(t, rec)
	assert.Equal(t, "operation_rate", b.Resource)
	assert.Zero(t, b.RetryAfter)

	// RetryAfter needs no middleware for a rate.
	d, ok := reslimithttp.RetryAfter(httptest.NewRequest(http.MethodGet, "/", nil),
		&reslimit.LimitError{Resource: reslimit.OperationRate, Tenant: "a", RetryAfter: 1500 * time.Millisecond})
	assert.True(t, ok)
	assert.Equal(t, 2*time.Second, d)
	_, ok = reslimithttp.RetryAfter(nil, errors.New("other"))
	assert.False(t, ok)
}
