package reslimithttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/reslimit/reslimit"
)

// ErrUnknownTenant is wrapped by the error the ErrorHandler gets when the
// tenant function fails or returns an empty tenant. The default handler
// answers it with 401 Unauthorized.
var ErrUnknownTenant = errors.New("reslimithttp: unknown tenant")

// ErrRequestBodyTooLarge is wrapped, with the FileSize *reslimit.LimitError,
// by the error of a request whose body is over the middleware's
// MaxFileSize: the refusal of a body whose Content-Length is over it, and
// the error a read of r.Body returns when the body passes it. The default
// handler answers it with 413 Content Too Large; a FileSize limit of
// anything else the run does (a tool that writes too big a file) is one of
// the run's own limits, answered 503.
var ErrRequestBodyTooLarge = errors.New("reslimithttp: request body too large")

// bodyTooLarge wraps le, a FileSize refusal of the request's body, with
// ErrRequestBodyTooLarge.
func bodyTooLarge(le error) error { return fmt.Errorf("%w: %w", ErrRequestBodyTooLarge, le) }

// Option configures Middleware.
type Option func(*config)

type config struct {
	onError ErrorHandler
	reset   func(tenant string) time.Time
	err     error // the first invalid option
}

func (c *config) setErr(err error) {
	if c.err == nil {
		c.err = err
	}
}

// WithErrorHandler sets the function that writes the response of every
// request the middleware refuses or that was stopped by a limit, and of
// every call of Error. The default is DefaultErrorHandler. A nil h is
// invalid.
func WithErrorHandler(h ErrorHandler) Option {
	return func(c *config) {
		if h == nil {
			c.setErr(fmt.Errorf("%w: reslimithttp.WithErrorHandler(nil)", reslimit.ErrInvalidArgument))
			return
		}
		c.onError = h
	}
}

// WithResetTime tells the middleware when a tenant's cumulative quota
// resets (for example when a job calls Account.Reset at the start of each
// billing period). When it returns a time after now, a refusal by one of
// the tenant's cumulative limits (evaluations, operations, CPU time, total
// memory, function calls) carries a Retry-After header with the seconds
// until then (at least 1), and the RateLimit header of every response of
// a tenant with a cumulative limit says the seconds until then (t). A zero
// time means "unknown": no Retry-After, no t. fn is called for every such
// response: it must be cheap and safe for concurrent use; a nil fn is
// invalid.
func WithResetTime(fn func(tenant string) time.Time) Option {
	return func(c *config) {
		if fn == nil {
			c.setErr(fmt.Errorf("%w: reslimithttp.WithResetTime(nil)", reslimit.ErrInvalidArgument))
			return
		}
		c.reset = fn
	}
}

// Middleware returns a net/http middleware that runs every request as one
// evaluation of its tenant's Account in ledger, bounded per request by
// limits. It is safe for concurrent use.
//
// For each request it calls tenant to name the tenant, takes the tenant's
// account (ledger.Account), and serves the request inside reslimit.Run
// with reslimit.WithAccount, so that:
//
//   - reslimit.FromContext(r.Context()) in the handler returns the
//     request's *reslimit.Tracker, and Tenant(r) the tenant;
//   - the handler's context is the run's context: it is cancelled, with
//     the *reslimit.LimitError as context.Cause, when limits.Timeout
//     passes or the CPU time (the request's or the tenant's) is used up;
//   - when limits.MaxFileSize is set, r.Body reads through the tracker's
//     LimitReader, and a request whose Content-Length is already over it
//     is refused before its run (413, not billed).
//
// Run locks the handler's goroutine to its OS thread while it runs, so
// that its real CPU time can be counted: requests that block for long hold
// a thread each. Bound them with AccountLimits.MaxConcurrent.
//
// The ErrorHandler (DefaultErrorHandler unless WithErrorHandler) writes the
// response, with the status StatusCode gives by default, when:
//
//   - tenant fails or returns "" (401; the error wraps ErrUnknownTenant);
//   - the account refuses the run before it starts: it is exhausted, at
//     its MaxEvaluations or MaxConcurrent (429, with Retry-After when
//     WithResetTime knows when the quota resets), or above its
//     EvaluationsPerSecond (429, with Retry-After from the refusal's
//     RetryAfter);
//   - its body is over limits.MaxFileSize (413; the error wraps
//     ErrRequestBodyTooLarge);
//   - the request was stopped by its own limits (503, also for a
//     file_size limit of something else than its body) or by its tenant's
//     (429), and the handler has not written a response. The middleware learns of a stop from the tracker (timeout,
//     CPU time), from the body reader (file size), and from Error, which
//     handlers call with the error a tracker method returned;
//
// Every error body says whether the request was billed (ErrorBody.Billed,
// Billed): a request is billed, as one evaluation of its tenant with what
// it used, once its run started, however it ends; a refusal before the run
// is not.
//
// A nil ledger or tenant function, invalid limits or an invalid option
// value are reported here, when the middleware is built (an error wrapping
// reslimit.ErrInvalidArgument or reslimit.ErrInvalidLimits), not on every
// request.
//
// A response the handler already started is left as it is. The
// ResponseWriter the handler gets supports http.Flusher and
// http.Hijacker when the server's does, and Unwrap for
// http.ResponseController.
func Middleware(ledger *reslimit.Ledger, tenant func(*http.Request) (string, error), limits reslimit.Limits, opts ...Option) (func(http.Handler) http.Handler, error) {
	switch {
	case ledger == nil:
		return nil, fmt.Errorf("%w: reslimithttp.Middleware with a nil ledger", reslimit.ErrInvalidArgument)
	case tenant == nil:
		return nil, fmt.Errorf("%w: reslimithttp.Middleware with a nil tenant function", reslimit.ErrInvalidArgument)
	}
	if err := limits.Validate(); err != nil {
		return nil, err
	}
	cfg := &config{onError: DefaultErrorHandler}
	for _, o := range opts {
		if o != nil {
			o(cfg)
		}
	}
	if cfg.err != nil {
		return nil, cfg.err
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			st := &requestState{cfg: cfg}
			r = r.WithContext(context.WithValue(r.Context(), stateKey{}, st))
			serve(ledger, tenant, limits, next, st, w, r)
		})
	}, nil
}

func serve(ledger *reslimit.Ledger, tenant func(*http.Request) (string, error), limits reslimit.Limits, next http.Handler, st *requestState, w http.ResponseWriter, r *http.Request) {
	name, err := tenant(r)
	if err == nil && name == "" {
		err = errors.New("empty tenant name")
	}
	if err != nil {
		st.cfg.onError(w, r, fmt.Errorf("%w: %w", ErrUnknownTenant, err))
		return
	}
	st.tenant = name
	acct := ledger.Account(name)
	if err := acct.Err(); err != nil {
		st.cfg.onError(w, r, err)
		return
	}
	headers := func(h http.Header, refusal error) {
		setRateLimitHeaders(h, acct, st.cfg.reset, refusal, time.Now())
	}
	hasBody := limits.MaxFileSize > 0 && r.Body != nil && r.Body != http.NoBody
	if hasBody && r.ContentLength > limits.MaxFileSize {
		// Refused before the run, like a refusal at admission: no
		// evaluation, nothing billed.
		headers(w.Header(), nil)
		st.cfg.onError(w, r, bodyTooLarge(&reslimit.LimitError{Resource: reslimit.FileSize, Limit: limits.MaxFileSize, Requested: r.ContentLength}))
		return
	}
	rw := &responseWriter{ResponseWriter: w, before: func(h http.Header) { headers(h, nil) }}
	var inner *http.Request
	_, err = reslimit.Run(r.Context(), limits, func(ctx context.Context) error {
		st.started.Store(true)
		tr := reslimit.FromContext(ctx)
		inner = r.WithContext(ctx)
		if hasBody {
			inner.Body = &limitedBody{r: tr.LimitReader(r.Body), c: r.Body, st: st}
		}
		next.ServeHTTP(rw, inner)
		return st.err()
	}, reslimit.WithAccount(acct))
	if !st.started.Load() {
		// Refused before the handler ran (or invalid limits).
		headers(w.Header(), err)
		st.cfg.onError(w, r, err)
		return
	}
	if rw.started() {
		return
	}
	rw.prepare() // the headers of the response the server or onError writes
	if err == nil || !errors.Is(err, reslimit.ErrLimitExceeded) {
		// Not a stop by a limit (the handler chose to write nothing, or
		// reported another error with Error, which wrote the response).
		return
	}
	st.cfg.onError(rw, inner, err)
}

type stateKey struct{}

// requestState is what the middleware knows of one request; handlers
// reach it through the request's context.
type requestState struct {
	cfg    *config
	tenant string
	// started is set when the request's run starts: from then on the
	// request is an evaluation of its tenant, billed whatever happens.
	started atomic.Bool

	mu    sync.Mutex
	first error // first error recorded by Error or the body reader
}

func (s *requestState) record(err error) {
	s.mu.Lock()
	if s.first == nil {
		s.first = err
	}
	s.mu.Unlock()
}

func (s *requestState) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.first
}

func stateOf(r *http.Request) *requestState {
	if r == nil {
		return nil
	}
	s, _ := r.Context().Value(stateKey{}).(*requestState)
	return s
}

// Tenant returns the tenant of a request served by Middleware, or "" when
// r is not (or its tenant is not known yet).
func Tenant(r *http.Request) string {
	if s := stateOf(r); s != nil {
		return s.tenant
	}
	return ""
}

// Billed reports whether the request r, served by Middleware, is billed
// to its tenant: whether its run started, so that it counts as one
// evaluation of the tenant and what it used is charged to the tenant's
// account, however it ends. It reports false for a request refused before
// its run (an unknown tenant, a refusal at admission by the tenant's
// limits, a body whose Content-Length is over MaxFileSize) and for a
// request not served by Middleware. An ErrorHandler can call it with the
// request it gets.
func Billed(r *http.Request) bool {
	if s := stateOf(r); s != nil {
		return s.started.Load()
	}
	return false
}

// limitedBody reads the request body through the tracker's LimitReader and
// records the limit error it returns, so that the middleware answers
// (413 for the body's size) even when the handler only returns.
type limitedBody struct {
	r  io.Reader
	c  io.Closer
	st *requestState
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && errors.Is(err, reslimit.ErrLimitExceeded) {
		var le *reslimit.LimitError
		if errors.As(err, &le) && le.Resource == reslimit.FileSize && le.Tenant == "" {
			err = bodyTooLarge(err)
		}
		b.st.record(err)
	}
	return n, err
}

func (b *limitedBody) Close() error { return b.c.Close() }

// responseWriter notes whether the handler started a response, and calls
// before (once) just before the response's header is written.
type responseWriter struct {
	http.ResponseWriter
	before   func(http.Header)
	mu       sync.Mutex
	wrote    bool
	prepared bool
}

// prepare calls before, unless it was called already.
func (w *responseWriter) prepare() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.prepareLocked()
}

func (w *responseWriter) prepareLocked() {
	if !w.prepared && !w.wrote {
		w.prepared = true
		if w.before != nil {
			w.before(w.ResponseWriter.Header())
		}
	}
}

func (w *responseWriter) mark() {
	w.mu.Lock()
	w.prepareLocked()
	w.wrote = true
	w.mu.Unlock()
}

func (w *responseWriter) started() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.wrote
}

func (w *responseWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.mark()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(p []byte) (int, error) {
	w.mark()
	return w.ResponseWriter.Write(p)
}

// Flush implements http.Flusher when the underlying writer can flush.
func (w *responseWriter) Flush() {
	w.mark()
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack implements http.Hijacker when the underlying writer can hijack.
func (w *responseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.mu.Lock()
	w.prepared, w.wrote = true, true // no header: the connection is the handler's
	w.mu.Unlock()
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// Unwrap returns the underlying writer, for http.ResponseController.
func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
