package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDemo(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"-demo", "-duration", "1500ms"}, &out))
	s := out.String()
	t.Log(s)
	for _, want := range []string{
		"responses by client:", "free", "pro", "trial", "unknown key",
		"429 tenant operations limit 50000", "401 unknown_tenant",
		`reslimit_tenant_evaluations_total{tenant="free"} 25`,
		`reslimit_tenant_refusals_total{resource="operations",tenant="free"}`,
		`reslimit_run_stops_total{resource="operations",tenant="pro"}`, // n=500000: over the request's limit
		`reslimit_tenant_period{tenant="free"} 1`,
	} {
		assert.Contains(t, s, want)
	}
}

func TestRoutes(t *testing.T) {
	a, err := newApp(time.Minute)
	require.NoError(t, err)
	defer a.monitor.Stop()
	defer a.ledger.Close(context.Background())
	srv := httptest.NewServer(a.mux)
	defer srv.Close()
	get := func(path, key string) (*http.Response, string) {
		req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		require.NoError(t, err)
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, string(b)
	}
	resp, body := get("/api/work?n=10", "key-pro")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, `"tenant":"pro"`)
	resp, _ = get("/api/work?n=10", "")
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp, body = get("/api/work?n=300000", "key-pro")
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Contains(t, body, `"resource":"operations"`)
	resp, body = get("/debug/reslimit/", "")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, "<title>reslimit status</title>")
	resp, body = get("/debug/reslimit/snapshot.json", "")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, body, `"name":"pro"`)
	resp, body = get("/metrics", "")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, strings.Contains(body, `reslimit_tenant_evaluations_total{tenant="pro"} 2`), body)
	resp, _ = get("/", "")
	assert.Equal(t, "/debug/reslimit/", resp.Request.URL.Path, "/ redirects to the status page")
	srv.Client().CloseIdleConnections()
}
