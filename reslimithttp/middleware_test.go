package reslimithttp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimithttp"
)

const evilTenant = `<script>alert(1)</script>`

// byHeader names the tenant from the X-Tenant header.
func byHeader(r *http.Request) (string, error) {
	t := r.Header.Get("X-Tenant")
	if t == "" {
		return "", errors.New("no X-Tenant header")
	}
	return t, nil
}

func okHandler(w http.ResponseWriter, r *http.Request) {
	_, _ = io.WriteString(w, "ok")
}

func do(t *testing.T, h http.Handler, method, target, tenant string, body io.Reader) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, body)
	if tenant != "" {
		req.Header.Set("X-Tenant", tenant)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func decodeError(t *testing.T, rec *httptest.ResponseRecorder) reslimithttp.ErrorBody {
	t.Helper()
	assert.Equal(t, "application/json; charset=utf-8", rec.Header().Get("Content-Type"))
	var b reslimithttp.ErrorBody
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &b), rec.Body.String())
	return b
}

func TestMiddlewareRunsRequestAsEvaluation(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	var got *reslimit.Tracker
	var tenant string
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{MaxOperations: 100})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got = reslimit.FromContext(r.Context())
			tenant = reslimithttp.Tenant(r)
			require.NoError(t, got.TrackOperations(7))
			require.NoError(t, got.TrackCall())
			okHandler(w, r)
		}))

	rec := do(t, h, http.MethodGet, "/", "acme", nil)
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "ok", rec.Body.String())
	require.NotNil(t, got, "FromContext in the handler")
	assert.Equal(t, reslimit.Limits{MaxOperations: 100}, got.Limits())
	assert.Equal(t, "acme", tenant)
	acct, ok := ledger.Lookup("acme")
	require.True(t, ok)
	assert.Same(t, acct, got.Account())
	st := acct.Stats()
	assert.EqualValues(t, 1, st.Evaluations)
	assert.EqualValues(t, 7, st.Operations)
	assert.EqualValues(t, 1, st.Calls)
	assert.EqualValues(t, 0, st.Running)

	rec = do(t, h, http.MethodGet, "/", "acme", nil)
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.EqualValues(t, 2, acct.Stats().Evaluations)
}

// A tool wrapped with reslimit.Limit and called with the request's context
// is a child of the request's run: its operations are billed to the
// request's tenant.
func TestMiddlewareBillsNestedToolsToTheTenant(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	tool := reslimit.Limit(func(ctx context.Context, n int) (int, error) {
		tr := reslimit.FromContext(ctx)
		for i := 0; i < n; i++ {
			if err := tr.TrackOperation(); err != nil {
				return i, err
			}
		}
		return n, nil
	}, reslimit.Strict())
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, err := tool(r.Context(), 40); err != nil {
				reslimithttp.Error(w, r, err)
				return
			}
			okHandler(w, r)
		}))
	rec := do(t, h, http.MethodGet, "/", "acme", nil)
	require.Equal(t, http.StatusOK, rec.Code)
	acct, ok := ledger.Lookup("acme")
	require.True(t, ok)
	assert.EqualValues(t, 40, acct.Stats().Operations)
}

func TestMiddlewareUnknownTenant(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	called := false
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		called = true
	}))
	rec := do(t, h, http.MethodGet, "/", "", nil)
	assert.Equal(t, http.StatusUnauthorized, rec.Code)
	assert.False(t, called)
	b := decodeError(t, rec)
	assert.Equal(t, "unknown_tenant", b.Error)
	assert.NotContains(t, rec.Body.String(), "X-Tenant", "the tenant function's error is not shown to the client")
	assert.Empty(t, ledger.Tenants(), "no account for an unknown tenant")

	// An empty tenant with a nil error is unknown too.
	h = mustMiddleware(t, ledger, func(*http.Request) (string, error) { return "", nil }, reslimit.Limits{})(http.HandlerFunc(okHandler))
	assert.Equal(t, http.StatusUnauthorized, do(t, h, http.MethodGet, "/", "x", nil).Code)
}

func TestMiddlewareExhaustedTenantGets429WithRetryAfter(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{MaxEvaluations: 2})
	reset := time.Now().Add(90 * time.Second)
	var resetFor []string
	var mu sync.Mutex
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{},
		reslimithttp.WithResetTime(func(tenant string) time.Time {
			mu.Lock()
			resetFor = append(resetFor, tenant)
			mu.Unlock()
			return reset
		}))(http.HandlerFunc(okHandler))

	for range 2 {
		require.Equal(t, http.StatusOK, do(t, h, http.MethodGet, "/", "acme", nil).Code)
	}
	rec := do(t, h, http.MethodGet, "/", "acme", nil)
	assert.Equal(t, http.StatusTooManyRequests, rec.Code)
	ra, err := strconv.Atoi(rec.Header().Get("Retry-After"))
	require.NoError(t, err, "Retry-After %q", rec.Header().Get("Retry-After"))
	assert.InDelta(t, 90, ra, 2)
	b := decodeError(t, rec)
	assert.Equal(t, reslimithttp.ErrorBody{
		Error: "limit_exceeded", Scope: "tenant", Resource: "evaluations", Unit: "count",
		Limit: 2, Used: 2, Requested: 1, Tenant: "acme", Message: b.Message,
	}, b)
	assert.Contains(t, b.Message, "evaluations limit 2 exceeded")
	assert.Equal(t, []string{"acme", "acme", "acme", "acme"}, resetFor, "for RateLimit's t on each response, and Retry-After")
	assert.Equal(t, `"evaluations";r=0;t=90`, rec.Header().Get("RateLimit"))

	// The raw body has the fields named in the issue.
	var raw map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &raw))
	assert.Equal(t, "limit_exceeded", raw["error"])
	assert.Equal(t, "evaluations", raw["resource"])
	assert.EqualValues(t, 2, raw["limit"])
	assert.EqualValues(t, 2, raw["used"])
	assert.Equal(t, "acme", raw["tenant"])

	// Other tenants are not affected; the refusal did not count.
	assert.Equal(t, http.StatusOK, do(t, h, http.MethodGet, "/", "other", nil).Code)
	acct, _ := ledger.Lookup("acme")
	assert.EqualValues(t, 2, acct.Stats().Evaluations)
	assert.EqualValues(t, 1, acct.Stats().Refusals[reslimit.Evaluations])
}

func TestMiddlewareExhaustedQuotaWithoutResetTime(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{MaxTotalOperations: 5})
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := reslimit.FromContext(r.Context()).TrackOperations(5); err != nil {
			reslimithttp.Error(w, r, err)
			return
		}
		okHandler(w, r)
	}))
	require.Equal(t, http.StatusOK, do(t, h, http.MethodGet, "/", "acme", nil).Code)
	rec := do(t, h, http.MethodGet, "/", "acme", nil)
	assert.Equal(t, http.StatusTooManyRequests, rec.Code)
	assert.Empty(t, rec.Header().Get("Retry-After"), "no reset time known")
	b := decodeError(t, rec)
	assert.Equal(t, "operations", b.Resource)
	assert.Equal(t, "tenant", b.Scope)
	assert.EqualValues(t, 5, b.Limit)
	assert.EqualValues(t, 5, b.Used)
}

func TestMiddlewareTenantConcurrency(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{MaxConcurrent: 1})
	entered := make(chan struct{})
	release := make(chan struct{})
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{},
		reslimithttp.WithResetTime(func(string) time.Time { return time.Now().Add(time.Hour) }),
	)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(entered)
			<-release
		}
		okHandler(w, r)
	}))

	var wg sync.WaitGroup
	var slow *httptest.ResponseRecorder
	wg.Go(func() { slow = do(t, h, http.MethodGet, "/slow", "acme", nil) })
	<-entered
	rec := do(t, h, http.MethodGet, "/", "acme", nil)
	close(release)
	wg.Wait()

	assert.Equal(t, http.StatusOK, slow.Code)
	assert.Equal(t, http.StatusTooManyRequests, rec.Code)
	assert.Empty(t, rec.Header().Get("Retry-After"), "a concurrency refusal has no quota reset")
	b := decodeError(t, rec)
	assert.Equal(t, "concurrent_operations", b.Resource)
	assert.EqualValues(t, 1, b.Limit)
	assert.EqualValues(t, 1, b.Used)
	// Once the slow request is done, the tenant can run again.
	assert.Equal(t, http.StatusOK, do(t, h, http.MethodGet, "/", "acme", nil).Code)
}

func TestMiddlewareTimeoutCancelsHandlerContextAnd503(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	var cause error
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{Timeout: 30 * time.Millisecond})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
				cause = context.Cause(r.Context())
				require.Error(t, reslimit.FromContext(r.Context()).Err())
			case <-time.After(10 * time.Second):
				okHandler(w, r)
			}
		}))
	rec := do(t, h, http.MethodGet, "/", "acme", nil)
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	var le *reslimit.LimitError
	require.ErrorAs(t, cause, &le)
	assert.Equal(t, reslimit.Timeout, le.Resource)
	b := decodeError(t, rec)
	assert.Equal(t, "timeout", b.Resource)
	assert.Equal(t, "request", b.Scope)
	assert.Equal(t, "seconds", b.Unit)
	assert.InDelta(t, 0.03, b.Limit, 1e-9)
	assert.GreaterOrEqual(t, b.Used, 0.03)
	assert.Equal(t, "acme", b.Tenant)

	acct, _ := ledger.Lookup("acme")
	hist := acct.History()
	require.Len(t, hist, 1)
	assert.ErrorAs(t, hist[0].Err, &le, "the run's history records the stop")
}

func TestMiddlewareHandlerResponseIsKept(t *testing.T) {
	// A handler that answers by itself after a stop keeps its answer.
	ledger := mustLedger(t, reslimit.AccountLimits{})
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{Timeout: 10 * time.Millisecond})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
			w.WriteHeader(http.StatusGatewayTimeout)
			_, _ = io.WriteString(w, "mine")
		}))
	rec := do(t, h, http.MethodGet, "/", "acme", nil)
	assert.Equal(t, http.StatusGatewayTimeout, rec.Code)
	assert.Equal(t, "mine", rec.Body.String())
}

func TestMiddlewareErrorHelper(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{MaxOperations: 3, MaxMemoryBytes: 100})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tr := reslimit.FromContext(r.Context())
			var err error
			switch r.URL.Path {
			case "/ops":
				err = tr.TrackOperations(4)
			case "/mem":
				err = tr.TrackMemory(1000)
			case "/other":
				err = errors.New("database on fire")
			}
			if err != nil {
				reslimithttp.Error(w, r, err)
				return
			}
			okHandler(w, r)
		}))

	rec := do(t, h, http.MethodGet, "/ops", "acme", nil)
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	b := decodeError(t, rec)
	assert.Equal(t, reslimithttp.ErrorBody{
		Error: "limit_exceeded", Scope: "request", Resource: "operations", Unit: "count",
		Limit: 3, Used: 0, Requested: 4, Tenant: "acme", Billed: true, Message: b.Message,
	}, b)

	rec = do(t, h, http.MethodGet, "/mem", "acme", nil)
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	b = decodeError(t, rec)
	assert.Equal(t, "memory", b.Resource)
	assert.Equal(t, "bytes", b.Unit)
	assert.EqualValues(t, 1000, b.Requested)

	rec = do(t, h, http.MethodGet, "/other", "acme", nil)
	assert.Equal(t, http.StatusInternalServerError, rec.Code)
	b = decodeError(t, rec)
	assert.Equal(t, "internal_error", b.Error)
	assert.NotContains(t, rec.Body.String(), "fire", "internal errors are not shown")

	acct, _ := ledger.Lookup("acme")
	hist := acct.History()
	require.Len(t, hist, 3)
	assert.ErrorIs(t, hist[0].Err, reslimit.ErrLimitExceeded)
	assert.EqualError(t, hist[2].Err, "database on fire")
}

func TestErrorOutsideMiddleware(t *testing.T) {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	reslimithttp.Error(rec, req, &reslimit.LimitError{Resource: reslimit.CPUTime, Limit: int64(2 * time.Second), Used: int64(3 * time.Second), Tenant: "t"})
	assert.Equal(t, http.StatusTooManyRequests, rec.Code)
	assert.Empty(t, rec.Header().Get("Retry-After"))
	b := decodeError(t, rec)
	assert.Equal(t, "cpu_time", b.Resource)
	assert.Equal(t, "seconds", b.Unit)
	assert.InDelta(t, 2.0, b.Limit, 1e-9)
	assert.InDelta(t, 3.0, b.Used, 1e-9)
}

func TestStatusCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{&reslimit.LimitError{Resource: reslimit.Operations, Tenant: "a"}, http.StatusTooManyRequests},
		{&reslimit.LimitError{Resource: reslimit.FileSize}, http.StatusServiceUnavailable},
		{fmt.Errorf("%w: %w", reslimithttp.ErrRequestBodyTooLarge, &reslimit.LimitError{Resource: reslimit.FileSize}), http.StatusRequestEntityTooLarge},
		{&reslimit.LimitError{Resource: reslimit.Timeout}, http.StatusServiceUnavailable},
		{&reslimit.LimitError{Resource: reslimit.CPUTime}, http.StatusServiceUnavailable},
		{errors.Join(errors.New("wrapped"), &reslimit.LimitError{Resource: reslimit.Evaluations, Tenant: "a"}), http.StatusTooManyRequests},
		{reslimithttp.ErrUnknownTenant, http.StatusUnauthorized},
		{errors.New("x"), http.StatusInternalServerError},
		{nil, http.StatusInternalServerError},
	} {
		assert.Equal(t, tc.want, reslimithttp.StatusCode(tc.err), "%v", tc.err)
	}
}

func TestMiddlewareBodyLimit(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	var calls int
	var readErr error
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{MaxFileSize: 10})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls++
			b, err := io.ReadAll(r.Body)
			readErr = err
			if err != nil {
				return // the middleware answers 413
			}
			_, _ = w.Write(b)
		}))

	t.Run("exactly the limit", func(t *testing.T) {
		rec := do(t, h, http.MethodPost, "/", "acme", strings.NewReader("0123456789"))
		assert.Equal(t, http.StatusOK, rec.Code)
		assert.Equal(t, "0123456789", rec.Body.String())
	})
	t.Run("content length over the limit", func(t *testing.T) {
		calls = 0
		rec := do(t, h, http.MethodPost, "/", "acme", strings.NewReader(strings.Repeat("x", 100)))
		assert.Equal(t, http.StatusRequestEntityTooLarge, rec.Code)
		assert.Equal(t, 0, calls, "the handler does not run")
		b := decodeError(t, rec)
		assert.Equal(t, "file_size", b.Resource)
		assert.Equal(t, "bytes", b.Unit)
		assert.EqualValues(t, 10, b.Limit)
	})
	t.Run("streamed body over the limit", func(t *testing.T) {
		calls = 0
		req := httptest.NewRequest(http.MethodPost, "/", io.MultiReader(strings.NewReader(strings.Repeat("y", 25))))
		req.ContentLength = -1
		req.Header.Set("X-Tenant", "acme")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		assert.Equal(t, 1, calls)
		var le *reslimit.LimitError
		require.ErrorAs(t, readErr, &le, "the handler reads through LimitReader")
		assert.Equal(t, reslimit.FileSize, le.Resource)
		assert.Equal(t, http.StatusRequestEntityTooLarge, rec.Code)
		assert.Equal(t, "file_size", decodeError(t, rec).Resource)
	})
	t.Run("no body", func(t *testing.T) {
		rec := do(t, h, http.MethodGet, "/", "acme", nil)
		assert.Equal(t, http.StatusOK, rec.Code)
	})
}

func TestMiddlewareCustomErrorHandler(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{MaxEvaluations: 1})
	var seen []error
	var tenants []string
	custom := func(w http.ResponseWriter, r *http.Request, err error) {
		seen = append(seen, err)
		tenants = append(tenants, reslimithttp.Tenant(r))
		code := http.StatusTeapot
		if errors.Is(err, reslimithttp.ErrUnknownTenant) {
			code = http.StatusForbidden
		}
		w.WriteHeader(code)
	}
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{}, reslimithttp.WithErrorHandler(custom))(http.HandlerFunc(okHandler))
	assert.Equal(t, http.StatusOK, do(t, h, http.MethodGet, "/", "a", nil).Code)
	assert.Equal(t, http.StatusTeapot, do(t, h, http.MethodGet, "/", "a", nil).Code)
	assert.Equal(t, http.StatusForbidden, do(t, h, http.MethodGet, "/", "", nil).Code)
	require.Len(t, seen, 2)
	assert.ErrorIs(t, seen[0], reslimit.ErrLimitExceeded)
	assert.ErrorIs(t, seen[1], reslimithttp.ErrUnknownTenant)
	assert.Equal(t, []string{"a", ""}, tenants)
}

func TestMiddlewareSetupErrors(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	for name, tc := range map[string]struct {
		ledger *reslimit.Ledger
		tenant func(*http.Request) (string, error)
		limits reslimit.Limits
		want   error
	}{
		"invalid limits":  {ledger, byHeader, reslimit.Limits{MaxOperations: -1}, reslimit.ErrInvalidLimits},
		"nil ledger":      {nil, byHeader, reslimit.Limits{}, reslimit.ErrInvalidArgument},
		"nil tenant func": {ledger, nil, reslimit.Limits{}, reslimit.ErrInvalidArgument},
	} {
		mw, err := reslimithttp.Middleware(tc.ledger, tc.tenant, tc.limits)
		assert.ErrorIs(t, err, tc.want, name)
		assert.Nil(t, mw, name)
	}
}

// Invalid option values are errors when the middleware is built, never
// ignored; a nil Option is skipped.
func TestMiddlewareInvalidOptions(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	for name, tc := range map[string]struct {
		opt  reslimithttp.Option
		want string
	}{
		"WithErrorHandler": {reslimithttp.WithErrorHandler(nil), "WithErrorHandler(nil)"},
		"WithResetTime":    {reslimithttp.WithResetTime(nil), "WithResetTime(nil)"},
	} {
		mw, err := reslimithttp.Middleware(ledger, byHeader, reslimit.Limits{}, tc.opt)
		assert.ErrorIs(t, err, reslimit.ErrInvalidArgument, name)
		assert.ErrorContains(t, err, tc.want, name)
		assert.Nil(t, mw, name)
	}
	mw, err := reslimithttp.Middleware(ledger, byHeader, reslimit.Limits{}, nil)
	assert.NoError(t, err)
	assert.NotNil(t, mw)
}

func TestMiddlewareEscapesTenantInJSON(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{MaxEvaluations: 1})
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{})(http.HandlerFunc(okHandler))
	require.Equal(t, http.StatusOK, do(t, h, http.MethodGet, "/", evilTenant, nil).Code)
	rec := do(t, h, http.MethodGet, "/", evilTenant, nil)
	assert.Equal(t, http.StatusTooManyRequests, rec.Code)
	assert.NotContains(t, rec.Body.String(), "<script>")
	assert.Equal(t, "nosniff", rec.Header().Get("X-Content-Type-Options"))
	assert.Equal(t, evilTenant, decodeError(t, rec).Tenant)
}

func TestMiddlewareFlushAndResponseController(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{Timeout: 20 * time.Millisecond})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f, ok := w.(http.Flusher)
			require.True(t, ok)
			_, _ = io.WriteString(w, "partial")
			f.Flush()
			require.NoError(t, http.NewResponseController(w).Flush())
			<-r.Context().Done()
		}))
	rec := do(t, h, http.MethodGet, "/", "acme", nil)
	assert.Equal(t, http.StatusOK, rec.Code, "the response had started")
	assert.True(t, rec.Flushed)
	assert.Equal(t, "partial", rec.Body.String())
}

func TestMiddlewareOverRealServer(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{MaxEvaluations: 3})
	mw := mustMiddleware(t, ledger, byHeader, reslimit.Limits{MaxFileSize: 1 << 10})
	srv := httptest.NewServer(mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			reslimithttp.Error(w, r, err)
			return
		}
		_, _ = io.WriteString(w, strconv.FormatInt(n, 10))
	})))
	defer srv.Close()
	client := srv.Client()
	post := func(body string) *http.Response {
		req, err := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("X-Tenant", "acme")
		resp, err := client.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		require.NoError(t, resp.Body.Close())
		return resp
	}
	assert.Equal(t, http.StatusOK, post("hello").StatusCode)
	assert.Equal(t, http.StatusRequestEntityTooLarge, post(strings.Repeat("z", 4<<10)).StatusCode)
	assert.Equal(t, http.StatusOK, post("again").StatusCode)
	assert.Equal(t, http.StatusOK, post("third").StatusCode, "the oversized body was refused before its run: no evaluation")
	resp := post("over quota")
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	assert.Equal(t, "application/json; charset=utf-8", resp.Header.Get("Content-Type"))
	client.CloseIdleConnections()
}

// mustLedger returns reslimit.NewLedger(defaults, opts...), failing tb on
// an error.
func mustLedger(tb testing.TB, defaults reslimit.AccountLimits, opts ...reslimit.LedgerOption) *reslimit.Ledger {
	tb.Helper()
	l, err := reslimit.NewLedger(defaults, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

// mustMiddleware returns reslimithttp.Middleware(...), failing t on an
// error.
func mustMiddleware(t testing.TB, ledger *reslimit.Ledger, tenant func(*http.Request) (string, error), limits reslimit.Limits, opts ...reslimithttp.Option) func(http.Handler) http.Handler {
	t.Helper()
	mw, err := reslimithttp.Middleware(ledger, tenant, limits, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return mw
}
