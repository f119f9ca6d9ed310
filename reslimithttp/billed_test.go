package reslimithttp_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimithttp"
)

// billedHandler serves the paths the billed tests use: /ops tracks 5
// operations, /ops/error reports the refusal with Error, /read reads the
// body, /wait blocks until release is closed, /sleep waits for the run's
// timeout.
func billedHandler(started chan<- struct{}, release <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr := reslimit.FromContext(r.Context())
		switch r.URL.Path {
		case "/ops":
			if err := tr.TrackOperations(5); err != nil {
				reslimithttp.Error(w, r, err)
				return
			}
		case "/read":
			if _, err := io.ReadAll(r.Body); err != nil {
				return // the middleware answers
			}
		case "/wait":
			started <- struct{}{}
			<-release
		case "/sleep":
			<-r.Context().Done()
			return
		}
		okHandler(w, r)
	})
}

// Every error body says whether the request was billed: false for a
// refusal before the run (here), true for a run that started and was
// stopped (TestErrorBodyBilled).
func TestErrorBodyNotBilled(t *testing.T) {
	t.Run("unknown tenant", func(t *testing.T) {
		h := mustMiddleware(t, mustLedger(t, reslimit.AccountLimits{}), byHeader, reslimit.Limits{})(billedHandler(nil, nil))
		rec := do(t, h, http.MethodGet, "/", "", nil)
		require.Equal(t, http.StatusUnauthorized, rec.Code)
		assert.Contains(t, rec.Body.String(), `"billed":false`)
	})
	t.Run("max evaluations", func(t *testing.T) {
		ledger := mustLedger(t, reslimit.AccountLimits{MaxEvaluations: 1})
		h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{})(billedHandler(nil, nil))
		require.Equal(t, http.StatusOK, do(t, h, http.MethodGet, "/", "acme", nil).Code)
		rec := do(t, h, http.MethodGet, "/", "acme", nil)
		require.Equal(t, http.StatusTooManyRequests, rec.Code)
		b := decodeError(t, rec)
		assert.Equal(t, "evaluations", b.Resource)
		assert.False(t, b.Billed)
		assert.EqualValues(t, 1, ledger.Account("acme").Stats().Evaluations, "the refusal is no evaluation")
	})
	t.Run("max concurrent", func(t *testing.T) {
		started, release := make(chan struct{}), make(chan struct{})
		h := mustMiddleware(t, mustLedger(t, reslimit.AccountLimits{MaxConcurrent: 1}), byHeader, reslimit.Limits{})(billedHandler(started, release))
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := httptest.NewRequest(http.MethodGet, "/wait", nil)
			req.Header.Set("X-Tenant", "acme")
			h.ServeHTTP(httptest.NewRecorder(), req)
		}()
		<-started
		rec := do(t, h, http.MethodGet, "/", "acme", nil)
		close(release)
		wg.Wait()
		require.Equal(t, http.StatusTooManyRequests, rec.Code)
		b := decodeError(t, rec)
		assert.Equal(t, "concurrent_operations", b.Resource)
		assert.False(t, b.Billed)
	})
	t.Run("evaluation rate", func(t *testing.T) {
		h := mustMiddleware(t, mustLedger(t, reslimit.AccountLimits{EvaluationsPerSecond: 0.5}), byHeader, reslimit.Limits{})(billedHandler(nil, nil))
		require.Equal(t, http.StatusOK, do(t, h, http.MethodGet, "/", "acme", nil).Code)
		rec := do(t, h, http.MethodGet, "/", "acme", nil)
		require.Equal(t, http.StatusTooManyRequests, rec.Code)
		b := decodeError(t, rec)
		assert.Equal(t, "evaluation_rate", b.Resource)
		assert.False(t, b.Billed)
	})
	t.Run("exhausted quota", func(t *testing.T) {
		h := mustMiddleware(t, mustLedger(t, reslimit.AccountLimits{MaxTotalOperations: 5}), byHeader, reslimit.Limits{})(billedHandler(nil, nil))
		require.Equal(t, http.StatusOK, do(t, h, http.MethodGet, "/ops", "acme", nil).Code)
		rec := do(t, h, http.MethodGet, "/ops", "acme", nil)
		require.Equal(t, http.StatusTooManyRequests, rec.Code)
		b := decodeError(t, rec)
		assert.Equal(t, "operations", b.Resource)
		assert.False(t, b.Billed, "refused at admission: the quota has no room left")
	})
	t.Run("request body over MaxFileSize", func(t *testing.T) {
		ledger := mustLedger(t, reslimit.AccountLimits{})
		h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{MaxFileSize: 10})(billedHandler(nil, nil))
		rec := do(t, h, http.MethodPost, "/read", "acme", strings.NewReader(strings.Repeat("x", 11)))
		require.Equal(t, http.StatusRequestEntityTooLarge, rec.Code)
		b := decodeError(t, rec)
		assert.Equal(t, "file_size", b.Resource)
		assert.False(t, b.Billed)
		assert.Zero(t, ledger.Account("acme").Stats().Evaluations, "refused before the run")
	})
}

// A run that started and was stopped is billed, and its error body says so.
func TestErrorBodyBilled(t *testing.T) {
	t.Run("streamed body over MaxFileSize", func(t *testing.T) {
		h := mustMiddleware(t, mustLedger(t, reslimit.AccountLimits{}), byHeader, reslimit.Limits{MaxFileSize: 10})(billedHandler(nil, nil))
		req := httptest.NewRequest(http.MethodPost, "/read", io.MultiReader(strings.NewReader(strings.Repeat("y", 25))))
		req.ContentLength = -1
		req.Header.Set("X-Tenant", "acme")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		require.Equal(t, http.StatusRequestEntityTooLarge, rec.Code)
		assert.True(t, decodeError(t, rec).Billed, "the run had started when the body passed the limit")
	})
	t.Run("a run's own limit through Error", func(t *testing.T) {
		h := mustMiddleware(t, mustLedger(t, reslimit.AccountLimits{}), byHeader, reslimit.Limits{MaxOperations: 4})(billedHandler(nil, nil))
		rec := do(t, h, http.MethodGet, "/ops", "acme", nil)
		require.Equal(t, http.StatusServiceUnavailable, rec.Code)
		b := decodeError(t, rec)
		assert.Equal(t, "request", b.Scope)
		assert.True(t, b.Billed)
	})
	t.Run("a tenant limit during the run", func(t *testing.T) {
		h := mustMiddleware(t, mustLedger(t, reslimit.AccountLimits{MaxTotalOperations: 4}), byHeader, reslimit.Limits{})(billedHandler(nil, nil))
		rec := do(t, h, http.MethodGet, "/ops", "acme", nil)
		require.Equal(t, http.StatusTooManyRequests, rec.Code)
		b := decodeError(t, rec)
		assert.Equal(t, "tenant", b.Scope)
		assert.True(t, b.Billed, "the run had started")
	})
	t.Run("timeout", func(t *testing.T) {
		h := mustMiddleware(t, mustLedger(t, reslimit.AccountLimits{}), byHeader, reslimit.Limits{Timeout: 20 * time.Millisecond})(billedHandler(nil, nil))
		rec := do(t, h, http.MethodGet, "/sleep", "acme", nil)
		require.Equal(t, http.StatusServiceUnavailable, rec.Code)
		b := decodeError(t, rec)
		assert.Equal(t, "timeout", b.Resource)
		assert.True(t, b.Billed)
	})
}

// Billed is false outside Middleware; a custom ErrorHandler gets it.
func TestBilled(t *testing.T) {
	assert.False(t, reslimithttp.Billed(httptest.NewRequest(http.MethodGet, "/", nil)))
	assert.False(t, reslimithttp.Billed(nil))
	rec := httptest.NewRecorder()
	reslimithttp.DefaultErrorHandler(rec, httptest.NewRequest(http.MethodGet, "/", nil), context.Canceled)
	assert.Contains(t, rec.Body.String(), `"billed":false`)

	var got []bool
	h := mustMiddleware(t, mustLedger(t, reslimit.AccountLimits{MaxEvaluations: 1}), byHeader, reslimit.Limits{MaxOperations: 1},
		reslimithttp.WithErrorHandler(func(w http.ResponseWriter, r *http.Request, err error) {
			got = append(got, reslimithttp.Billed(r))
			w.WriteHeader(reslimithttp.StatusCode(err))
		}))(billedHandler(nil, nil))
	assert.Equal(t, http.StatusServiceUnavailable, do(t, h, http.MethodGet, "/ops", "acme", nil).Code)
	assert.Equal(t, http.StatusTooManyRequests, do(t, h, http.MethodGet, "/ops", "acme", nil).Code)
	assert.Equal(t, []bool{true, false}, got)
}
