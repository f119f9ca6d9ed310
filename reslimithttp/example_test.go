package reslimithttp_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimithttp"
)

// ExampleMiddleware serves an API whose requests are billed to the tenant
// named by the X-Tenant header. The handler calls a tool wrapped with
// reslimit.Limit: the tool's operations are billed to the request's tenant
// too, so once the tenant's quota is used up the tool is refused, and
// reslimithttp.Error answers 429 with a JSON ErrorBody.
func ExampleMiddleware() {
	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{MaxTotalOperations: 100})
	if err != nil {
		panic(err)
	}
	defer ledger.Close(context.Background())

	// search is a tool: each call may count up to 1,000 operations.
	search := reslimit.Limit(func(ctx context.Context, n int64) (int64, error) {
		return n, reslimit.FromContext(ctx).TrackOperations(n)
	}, reslimit.Limits{MaxOperations: 1000})

	byHeader := func(r *http.Request) (string, error) {
		if t := r.Header.Get("X-Tenant"); t != "" {
			return t, nil
		}
		return "", errors.New("no X-Tenant header")
	}
	limited, err := reslimithttp.Middleware(ledger, byHeader, reslimit.Limits{Timeout: 5 * time.Second})
	if err != nil {
		panic(err)
	}
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := search(r.Context(), 60)
		if err != nil {
			reslimithttp.Error(w, r, err)
			return
		}
		fmt.Fprintf(w, "searched %d\n", n)
	})
	srv := httptest.NewServer(limited(api))
	defer srv.Close()

	for range 2 {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/search", nil)
		req.Header.Set("X-Tenant", "acme")
		resp, err := srv.Client().Do(req)
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%d %s", resp.StatusCode, body)
	}
	// Output:
	// 200 searched 60
	// 429 {"error":"limit_exceeded","scope":"tenant","resource":"operations","unit":"count","limit":100,"used":60,"requested":60,"tenant":"acme","billed":true,"message":"reslimit: tenant \"acme\" operations limit 100 exceeded: used 60, requested 60"}
}
