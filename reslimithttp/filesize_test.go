package reslimithttp_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimithttp"
)

// 413 is for the request body only: a file_size limit of something the run
// does (here a tool, a nested run, writing too big a file) is one of the
// run's own limits, answered 503 like a timeout, and billed.
func TestFileSizeOfRunIs503BodyIs413(t *testing.T) {
	// writeFile is a tool that writes n bytes to a file bounded by its
	// run's MaxFileSize (a file size is not inherited from the request).
	writeFile := reslimit.Limit(func(ctx context.Context, n int) (int64, error) {
		return io.Copy(reslimit.FromContext(ctx).LimitWriter(io.Discard), strings.NewReader(strings.Repeat("f", n)))
	}, reslimit.Limits{MaxFileSize: 10})
	h := mustMiddleware(t, mustLedger(t, reslimit.AccountLimits{}), byHeader, reslimit.Limits{MaxFileSize: 10})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				reslimithttp.Error(w, r, err)
				return
			}
			if _, err := writeFile(r.Context(), 2*len(body)); err != nil {
				reslimithttp.Error(w, r, err)
				return
			}
			okHandler(w, r)
		}))

	rec := do(t, h, http.MethodPost, "/", "acme", strings.NewReader("12345"))
	require.Equal(t, http.StatusOK, rec.Code, "a 5-byte body, a 10-byte file")

	rec = do(t, h, http.MethodPost, "/", "acme", strings.NewReader("123456"))
	require.Equal(t, http.StatusServiceUnavailable, rec.Code, "the tool wrote 12 bytes: the run's own limit")
	b := decodeError(t, rec)
	assert.Equal(t, "file_size", b.Resource)
	assert.Equal(t, "request", b.Scope)
	assert.True(t, b.Billed)

	rec = do(t, h, http.MethodPost, "/", "acme", strings.NewReader(strings.Repeat("b", 11)))
	require.Equal(t, http.StatusRequestEntityTooLarge, rec.Code, "an 11-byte body, by its Content-Length")
	b = decodeError(t, rec)
	assert.Equal(t, "file_size", b.Resource)
	assert.False(t, b.Billed)

	req := httptest.NewRequest(http.MethodPost, "/", io.MultiReader(strings.NewReader(strings.Repeat("s", 11))))
	req.ContentLength = -1
	req.Header.Set("X-Tenant", "acme")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	require.Equal(t, http.StatusRequestEntityTooLarge, rec.Code, "an 11-byte streamed body, passed Error by the handler")
	b = decodeError(t, rec)
	assert.Equal(t, "file_size", b.Resource)
	assert.True(t, b.Billed)
}

// The error a read of the body returns wraps both ErrRequestBodyTooLarge
// and the FileSize *LimitError.
func TestBodyReadErrorWrapsErrRequestBodyTooLarge(t *testing.T) {
	var readErr error
	h := mustMiddleware(t, mustLedger(t, reslimit.AccountLimits{}), byHeader, reslimit.Limits{MaxFileSize: 3})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, readErr = io.ReadAll(r.Body)
		}))
	req := httptest.NewRequest(http.MethodPost, "/", io.MultiReader(strings.NewReader("abcdef")))
	req.ContentLength = -1
	req.Header.Set("X-Tenant", "acme")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	assert.Equal(t, http.StatusRequestEntityTooLarge, rec.Code)
	assert.ErrorIs(t, readErr, reslimithttp.ErrRequestBodyTooLarge)
	assert.ErrorIs(t, readErr, reslimit.ErrLimitExceeded)
	var le *reslimit.LimitError
	require.ErrorAs(t, readErr, &le)
	assert.Equal(t, reslimit.FileSize, le.Resource)
}
