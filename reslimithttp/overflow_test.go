package reslimithttp_test

import (
	"math"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimithttp"
)

// Issue 11, item 6: a request of math.MaxInt64 against a small per-request
// limit is that limit's refusal (503), not an internal error (500).
func TestHugeRequestPastALimitIs503(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	h := mustMiddleware(t, ledger, byHeader, reslimit.Limits{MaxOperations: 10, MaxMemoryBytes: 10})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tr := reslimit.FromContext(r.Context())
			var err error
			switch r.URL.Path {
			case "/ops":
				err = tr.TrackOperations(math.MaxInt64)
			case "/mem":
				_, err = tr.AcquireMemory(math.MaxInt64)
			}
			if err != nil {
				reslimithttp.Error(w, r, err)
				return
			}
			okHandler(w, r)
		}))
	for path, res := range map[string]string{"/ops": "operations", "/mem": "memory"} {
		rec := do(t, h, http.MethodGet, path, "acme", nil)
		assert.Equal(t, http.StatusServiceUnavailable, rec.Code, path)
		b := decodeError(t, rec)
		assert.Equal(t, "limit_exceeded", b.Error, path)
		assert.Equal(t, res, b.Resource, path)
		assert.InDelta(t, float64(math.MaxInt64), b.Requested, 1e6, path)
	}
}
