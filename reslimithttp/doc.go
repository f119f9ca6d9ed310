// Package reslimithttp connects reslimit to net/http: a middleware that runs
// every request as one evaluation of its tenant's reslimit.Account, and a
// live status page, to mount at /debug/reslimit like net/http/pprof.
//
// It uses the standard library only.
//
// # Middleware
//
//	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{MaxEvaluations: 10_000, MaxConcurrent: 20})
//	byKey := func(r *http.Request) (string, error) {
//		t, ok := tenants[r.Header.Get("X-API-Key")]
//		if !ok {
//			return "", errors.New("bad API key")
//		}
//		return t, nil
//	}
//	limited, err := reslimithttp.Middleware(ledger, byKey, reslimit.Limits{
//		Timeout: 2 * time.Second, MaxOperations: 100_000, MaxFileSize: 1 << 20,
//	})
//	if err != nil { ... } // a nil ledger or invalid limits
//	mux.Handle("/api/", limited(api))
//
// Inside the handler, reslimit.FromContext(r.Context()) is the request's
// tracker. A handler that gets an error from it calls Error, which answers
// with the middleware's ErrorHandler:
//
//	if err := reslimit.FromContext(r.Context()).TrackOperations(n); err != nil {
//		reslimithttp.Error(w, r, err)
//		return
//	}
//
// Statuses (DefaultErrorHandler, see StatusCode): 401 for an unknown
// tenant, 429 when the tenant is out of quota, evaluations or concurrent
// runs (with Retry-After when WithResetTime says when the quota resets), 503
// when the request is stopped by its own limits (a tool's file_size
// included), 413 when its body passes MaxFileSize. The body is a JSON
// ErrorBody, whose billed field says whether the request was billed.
//
// # Status page
//
//	mux.Handle("/debug/reslimit/", http.StripPrefix("/debug/reslimit", reslimithttp.Handler(ledger, monitor)))
//
// serves an HTML page at /debug/reslimit/ and its data at
// /debug/reslimit/snapshot.json, whose schema, Snapshot, is stable and
// documented there: snake_case names, resources by their String names,
// bytes in bytes, and every duration in seconds as a JSON number with a
// fraction.
//
// # Options
//
// Invalid values are errors at construction: Middleware returns an error
// wrapping reslimit.ErrInvalidArgument (a nil WithErrorHandler or
// WithResetTime, a nil ledger or tenant function) or
// reslimit.ErrInvalidLimits (invalid limits), and no middleware, rather
// than ignoring the value or falling back to a default. A nil Option is
// skipped.
package reslimithttp
