package reslimithttp

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/internal/resinfo"
)

// ErrorHandler writes the response for a request that Middleware refused
// or that a limit stopped, and for every call of Error. err is a
// *reslimit.LimitError (possibly wrapped), an error wrapping
// ErrUnknownTenant, or another error (a setup error, or whatever a handler
// passed to Error). An ErrorHandler must be safe for concurrent use.
//
// Tenant(r), Billed(r) and RetryAfter(r, err) give it what the middleware
// knows.
type ErrorHandler func(w http.ResponseWriter, r *http.Request, err error)

// Error lets a handler served by Middleware report err, typically the error
// a tracker method returned, and have the middleware's ErrorHandler write
// the response (DefaultErrorHandler outside Middleware). It also records err
// as the reason the request's run failed, in the account's history.
//
//	if err := reslimit.FromContext(r.Context()).TrackOperations(n); err != nil {
//		reslimithttp.Error(w, r, err) // 429 or 503 with a JSON body
//		return
//	}
//
// Call it before writing anything else, and at most once per request.
func Error(w http.ResponseWriter, r *http.Request, err error) {
	h := DefaultErrorHandler
	if st := stateOf(r); st != nil {
		st.record(err)
		h = st.cfg.onError
	}
	h(w, r, err)
}

// StatusCode returns the status DefaultErrorHandler answers err with:
//
//   - 401 Unauthorized for an error wrapping ErrUnknownTenant;
//   - 429 Too Many Requests for a limit of the tenant (a *LimitError whose
//     Tenant is set: exhausted quota, MaxEvaluations, MaxConcurrent, a
//     rate, ...);
//   - 413 Content Too Large for a request body over the middleware's
//     MaxFileSize (an error wrapping ErrRequestBodyTooLarge);
//   - 503 Service Unavailable for another per-request limit (timeout,
//     cpu_time, operations, memory, and file_size when something else than
//     the request body, such as a tool the handler ran, wrote too big a
//     file);
//   - 500 Internal Server Error otherwise.
func StatusCode(err error) int {
	if errors.Is(err, ErrUnknownTenant) {
		return http.StatusUnauthorized
	}
	var le *reslimit.LimitError
	if errors.As(err, &le) {
		switch {
		case le.Tenant != "":
			return http.StatusTooManyRequests
		case errors.Is(err, ErrRequestBodyTooLarge):
			return http.StatusRequestEntityTooLarge
		default:
			return http.StatusServiceUnavailable
		}
	}
	return http.StatusInternalServerError
}

// RetryAfter returns how long the client of r should wait before retrying
// after err, rounded up to whole seconds (at least 1s): for a refusal by
// one of the tenant's rates (evaluation_rate, operation_rate), the
// *LimitError's RetryAfter; for one of its cumulative limits, the time
// until the tenant's quota resets, as told by WithResetTime. It reports
// false for other errors, for a rate refusal that no wait can cure (more
// than the burst requested), and for a cumulative limit when r is not
// served by Middleware or the reset time is not known.
func RetryAfter(r *http.Request, err error) (time.Duration, bool) {
	var le *reslimit.LimitError
	if !errors.As(err, &le) || le.Tenant == "" {
		return 0, false
	}
	if resinfo.Rate(le.Resource) {
		if le.RetryAfter <= 0 {
			return 0, false
		}
		return wholeSeconds(le.RetryAfter), true
	}
	st := stateOf(r)
	if st == nil || st.cfg.reset == nil || !cumulative(le.Resource) {
		return 0, false
	}
	at := st.cfg.reset(le.Tenant)
	if at.IsZero() {
		return 0, false
	}
	return wholeSeconds(time.Until(at)), true
}

// wholeSeconds rounds d up to whole seconds, at least 1s: what a
// Retry-After header can say.
func wholeSeconds(d time.Duration) time.Duration {
	secs := max(int64(math.Ceil(d.Seconds())), 1)
	return time.Duration(secs) * time.Second
}

// cumulative reports whether an account limit on r is a quota that can be
// exhausted and reset, rather than a bound on what is held at once.
func cumulative(r reslimit.Resource) bool {
	return r != reslimit.Memory && r != reslimit.Concurrency
}

// ErrorBody is the JSON body DefaultErrorHandler writes. Its field names
// are stable.
//
// For a limit:
//
//	{"error":"limit_exceeded","scope":"tenant","resource":"operations","unit":"count",
//	 "limit":1000,"used":1000,"requested":1,"tenant":"acme","billed":false,"message":"reslimit: tenant \"acme\" operations limit 1000 exceeded: used 1000, requested 1"}
//
// For an unknown tenant:
// {"error":"unknown_tenant","billed":false,"message":"unknown tenant"};
// otherwise {"error":"internal_error","billed":true,"message":"internal error"}
// (billed as Billed says).
type ErrorBody struct {
	// Error is "limit_exceeded", "unknown_tenant" or "internal_error".
	Error string `json:"error"`
	// Scope is "tenant" for a limit of the tenant's account (429) and
	// "request" for a limit of the request itself (503, or 413 for its
	// body).
	Scope string `json:"scope,omitempty"`
	// Resource is the limited resource's name (reslimit.Resource.String):
	// "operations", "cpu_time", "file_size", "evaluations", ...
	Resource string `json:"resource,omitempty"`
	// Unit is the unit of Limit, Used and Requested: "bytes", "count" or
	// "seconds".
	Unit string `json:"unit,omitempty"`
	// Limit, Used and Requested are the *LimitError's values in Unit
	// (seconds as a fraction for cpu_time and timeout).
	Limit     float64 `json:"limit"`
	Used      float64 `json:"used"`
	Requested float64 `json:"requested"`
	// RetryAfter is, for a refusal by one of the tenant's rates, the
	// seconds (a fraction) after which a retry can succeed; the
	// Retry-After header has them rounded up.
	RetryAfter float64 `json:"retry_after,omitempty"`
	// Tenant is the request's tenant, when known.
	Tenant string `json:"tenant,omitempty"`
	// Billed is true when the request's run had started, so that the
	// request counts as an evaluation of its tenant and what it used is
	// billed (a run stopped by a limit, an error reported with Error);
	// false when it was refused before its run: an unknown tenant, a
	// refusal at admission (the tenant's evaluations, concurrent runs,
	// rates or exhausted quotas) or a request body whose Content-Length
	// is over MaxFileSize. See Billed.
	Billed bool `json:"billed"`
	// Message is a human-readable description. Internal errors are not
	// described, so nothing leaks to the client.
	Message string `json:"message"`
}

// DefaultErrorHandler writes err as JSON (an ErrorBody) with the status
// StatusCode(err), a Retry-After header when RetryAfter(r, err) knows one,
// and Cache-Control: no-store.
func DefaultErrorHandler(w http.ResponseWriter, r *http.Request, err error) {
	code := StatusCode(err)
	body := ErrorBody{Tenant: Tenant(r), Billed: Billed(r)}
	var le *reslimit.LimitError
	switch {
	case code == http.StatusUnauthorized:
		body.Error, body.Message = "unknown_tenant", "unknown tenant"
		body.Tenant = ""
	case errors.As(err, &le):
		body.Error = "limit_exceeded"
		body.Scope = "request"
		if le.Tenant != "" {
			body.Scope, body.Tenant = "tenant", le.Tenant
		}
		body.Resource = le.Resource.String()
		body.Unit = resinfo.Unit(le.Resource)
		body.Limit = resinfo.BaseValue(le.Resource, le.Limit)
		body.Used = resinfo.BaseValue(le.Resource, le.Used)
		body.Requested = resinfo.BaseValue(le.Resource, le.Requested)
		body.Message = le.Error()
		if resinfo.Rate(le.Resource) && le.RetryAfter > 0 {
			body.RetryAfter = le.RetryAfter.Seconds()
		}
		if d, ok := RetryAfter(r, err); ok {
			w.Header().Set("Retry-After", strconv.FormatInt(int64(d/time.Second), 10))
		}
	default:
		body.Error, body.Message = "internal_error", "internal error"
	}
	writeJSON(w, code, body)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
