package reslimithttp_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimithttp"
)

// statusMux mounts the handler like net/http/pprof.
func statusMux(h http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/debug/reslimit/", http.StripPrefix("/debug/reslimit", h))
	return mux
}

func get(t *testing.T, h http.Handler, target string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec
}

// demoLedger has three tenants: acme with usage near its limits, the
// evil one, and idle with no limits at all.
func demoLedger(t *testing.T) *reslimit.Ledger {
	t.Helper()
	ledger := mustLedger(t, reslimit.AccountLimits{MaxEvaluations: 10, MaxTotalOperations: 1000})
	acme := ledger.Account("acme")
	require.NoError(t, acme.SetLimit(reslimit.CPUTime, int64(2*time.Second)))
	require.NoError(t, acme.SetLimit(reslimit.TotalMemory, 1<<20))
	for range 3 {
		tr, err := acme.Begin(reslimit.Limits{})
		require.NoError(t, err)
		require.NoError(t, tr.TrackOperations(300))
		require.NoError(t, tr.TrackMemory(64<<10))
		require.NoError(t, tr.AddCPUTime(250*time.Millisecond))
		tr.End()
	}
	evil := ledger.Account(evilTenant)
	require.NoError(t, evil.SetLimit(reslimit.Evaluations, 1))
	tr, err := evil.Begin(reslimit.Limits{})
	require.NoError(t, err)
	tr.End()
	_, err = evil.Begin(reslimit.Limits{})
	require.Error(t, err)

	idle := ledger.Account("idle")
	require.NoError(t, idle.SetLimit(reslimit.Evaluations, 0))
	require.NoError(t, idle.SetLimit(reslimit.Operations, 0))
	return ledger
}

func TestStatusPageHTML(t *testing.T) {
	mux := statusMux(reslimithttp.Handler(demoLedger(t), nil))
	rec := get(t, mux, "/debug/reslimit/")
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "text/html; charset=utf-8", rec.Header().Get("Content-Type"))
	assert.Equal(t, "nosniff", rec.Header().Get("X-Content-Type-Options"))
	page := rec.Body.String()
	assert.Contains(t, page, "<title>reslimit status</title>")
	assert.Contains(t, page, `fetch("snapshot.json"`, "the page fetches its data relative to its URL")

	// Self-contained: nothing is loaded from elsewhere.
	assert.NotRegexp(t, `(?i)<script[^>]+src=`, page)
	assert.NotRegexp(t, `(?i)<link[^>]+rel="?stylesheet`, page)
	for _, m := range regexp.MustCompile(`(?i)(?:href|src)="([^"]*)"`).FindAllStringSubmatch(page, -1) {
		assert.True(t, strings.HasPrefix(m[1], "data:"), "reference to %q", m[1])
	}
	assert.NotRegexp(t, `(?i)https?://`, page)
	assert.NotContains(t, page, "@import")
	// Data never goes through an HTML parser.
	for _, sink := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		assert.NotContains(t, page, sink)
	}
	// Nothing from the ledger is in the page itself: it is all fetched.
	assert.NotContains(t, page, "acme")

	// The CSP allows exactly the inline script and style, by hash.
	csp := rec.Header().Get("Content-Security-Policy")
	assert.Contains(t, csp, "default-src 'none'")
	assert.Contains(t, csp, "connect-src 'self'")
	for _, tag := range []string{"script", "style"} {
		m := regexp.MustCompile(`(?s)<` + tag + `>(.*?)</` + tag + `>`).FindStringSubmatch(page)
		require.NotNil(t, m, tag)
		sum := sha256.Sum256([]byte(m[1]))
		assert.Contains(t, csp, tag+"-src 'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
	}
	assert.NotContains(t, csp, "unsafe-inline")

	head := httptest.NewRecorder()
	mux.ServeHTTP(head, httptest.NewRequest(http.MethodHead, "/debug/reslimit/", nil))
	assert.Equal(t, http.StatusOK, head.Code)
	assert.Empty(t, head.Body.String())
}

func TestStatusPageRouting(t *testing.T) {
	h := reslimithttp.Handler(demoLedger(t), nil)

	t.Run("strip prefix redirects the bare mount point", func(t *testing.T) {
		mux := http.NewServeMux()
		mux.Handle("/debug/reslimit", http.StripPrefix("/debug/reslimit", h))
		mux.Handle("/debug/reslimit/", http.StripPrefix("/debug/reslimit", h))
		rec := get(t, mux, "/debug/reslimit?x=1")
		assert.Equal(t, http.StatusMovedPermanently, rec.Code)
		assert.Equal(t, "./reslimit/?x=1", rec.Header().Get("Location"))
		assert.Equal(t, http.StatusOK, get(t, mux, "/debug/reslimit/").Code)
		assert.Equal(t, http.StatusOK, get(t, mux, "/debug/reslimit/snapshot.json").Code)
	})
	t.Run("strip prefix with slash", func(t *testing.T) {
		mux := http.NewServeMux()
		mux.Handle("/debug/reslimit/", http.StripPrefix("/debug/reslimit/", h))
		rec := get(t, mux, "/debug/reslimit/")
		assert.Equal(t, http.StatusOK, rec.Code)
		assert.Contains(t, rec.Body.String(), "<title>")
		rec = get(t, mux, "/debug/reslimit/snapshot.json")
		assert.Equal(t, http.StatusOK, rec.Code)
		assert.Equal(t, "application/json; charset=utf-8", rec.Header().Get("Content-Type"))
	})
	t.Run("mounted at a prefix without StripPrefix", func(t *testing.T) {
		mux := http.NewServeMux()
		mux.Handle("/ops/limits/", h)
		assert.Contains(t, get(t, mux, "/ops/limits/").Body.String(), "<title>")
		assert.Equal(t, http.StatusOK, get(t, mux, "/ops/limits/snapshot.json").Code)
		rec := get(t, mux, "/ops/limits")
		assert.Equal(t, http.StatusTemporaryRedirect, rec.Code, "ServeMux adds the slash itself")
		assert.Equal(t, "/ops/limits/", rec.Header().Get("Location"))
	})
	t.Run("mounted at the exact path", func(t *testing.T) {
		mux := http.NewServeMux()
		mux.Handle("/status", h)
		rec := get(t, mux, "/status")
		assert.Equal(t, http.StatusMovedPermanently, rec.Code)
		assert.Equal(t, "./status/", rec.Header().Get("Location"))
	})
	t.Run("no open redirect", func(t *testing.T) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.URL.Path = "//evil.example"
		req.RequestURI = "//evil.example"
		h.ServeHTTP(rec, req)
		assert.Equal(t, http.StatusMovedPermanently, rec.Code)
		assert.Equal(t, "./evil.example/", rec.Header().Get("Location"))
	})
	t.Run("methods", func(t *testing.T) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/snapshot.json", nil))
		assert.Equal(t, http.StatusMethodNotAllowed, rec.Code)
		assert.Equal(t, "GET, HEAD", rec.Header().Get("Allow"))
	})
}

func TestSnapshotJSON(t *testing.T) {
	ledger := demoLedger(t)
	rec := get(t, statusMux(reslimithttp.Handler(ledger, nil)), "/debug/reslimit/snapshot.json")
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
	body := rec.Body.String()
	assert.NotContains(t, body, "<script>", "JSON escapes <, > and & too")
	assert.Contains(t, body, `\u003cscript\u003e`)

	var snap reslimithttp.Snapshot
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &snap))
	assert.Equal(t, reslimithttp.SnapshotVersion, snap.Version)
	assert.WithinDuration(t, time.Now(), snap.Time, time.Minute)
	assert.Nil(t, snap.Monitor)
	require.Len(t, snap.Tenants, 3)
	names := []string{snap.Tenants[0].Name, snap.Tenants[1].Name, snap.Tenants[2].Name}
	assert.True(t, sort.StringsAreSorted(names), names)
	assert.ElementsMatch(t, []string{"acme", "idle", evilTenant}, names)

	byName := map[string]reslimithttp.TenantSnapshot{}
	for _, ts := range snap.Tenants {
		byName[ts.Name] = ts
	}
	acme := byName["acme"]
	assert.EqualValues(t, 3, acme.Evaluations)
	assert.EqualValues(t, 900, acme.Operations)
	assert.EqualValues(t, 3*64<<10, acme.TotalMemoryBytes)
	assert.EqualValues(t, 64<<10, acme.PeakMemoryBytes)
	assert.InDelta(t, 0.75, acme.CPUTimeSeconds, 0.05)
	assert.False(t, acme.Exhausted)
	assert.Equal(t, map[string]int64{}, acme.Refusals)
	// One entry per limited resource, in reslimit.Resources() order.
	var res []string
	lim := map[string]reslimithttp.LimitSnapshot{}
	for _, l := range acme.Limits {
		res = append(res, l.Resource)
		lim[l.Resource] = l
	}
	assert.Equal(t, []string{"total_memory", "cpu_time", "operations", "evaluations"}, res)
	assert.Equal(t, reslimithttp.LimitSnapshot{Resource: "operations", Unit: "count", Used: 900, Limit: 1000, Remaining: 100, Ratio: 0.9}, lim["operations"])
	assert.Equal(t, reslimithttp.LimitSnapshot{Resource: "evaluations", Unit: "count", Used: 3, Limit: 10, Remaining: 7, Ratio: 0.3}, lim["evaluations"])
	assert.Equal(t, "bytes", lim["total_memory"].Unit)
	assert.EqualValues(t, 1<<20, lim["total_memory"].Limit)
	cpu := lim["cpu_time"]
	assert.Equal(t, "seconds", cpu.Unit)
	assert.InDelta(t, 2.0, cpu.Limit, 1e-9, "durations are in seconds")
	assert.InDelta(t, 0.75, cpu.Used, 0.05)

	evil := byName[evilTenant]
	assert.True(t, evil.Exhausted)
	assert.Equal(t, map[string]int64{"evaluations": 1}, evil.Refusals)

	idle := byName["idle"]
	assert.Equal(t, []reslimithttp.LimitSnapshot{}, idle.Limits)
}

// TestSnapshotSchema pins the JSON field names: they are a contract.
func TestSnapshotSchema(t *testing.T) {
	ledger := demoLedger(t)
	mon, err := reslimit.NewMonitor(reslimit.MonitorConfig{})
	require.NoError(t, err)
	defer mon.Stop()
	acme, _ := ledger.Lookup("acme")
	require.NoError(t, mon.Register("acme", acme))
	mon.Poll()

	rec := get(t, reslimithttp.Handler(ledger, mon), "/snapshot.json")
	require.Equal(t, http.StatusOK, rec.Code)
	var raw map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &raw))
	assert.Equal(t, []string{"monitor", "tenants", "time", "version"}, keys(raw))
	tenant := raw["tenants"].([]any)[0].(map[string]any)
	assert.Equal(t, []string{
		"cpu_time_seconds", "evaluations", "exhausted", "function_calls", "limits", "memory_bytes",
		"name", "operations", "peak_memory_bytes", "period", "period_end", "period_start",
		"previous_period", "refusals", "run_stops", "running", "total_memory_bytes",
	}, keys(tenant))
	assert.Equal(t, []string{"limit", "ratio", "remaining", "resource", "unit", "used"},
		keys(tenant["limits"].([]any)[0].(map[string]any)))
	mon2 := raw["monitor"].(map[string]any)
	assert.Equal(t, []string{"events", "statistics"}, keys(mon2))
	assert.Equal(t, []string{
		"components", "concurrent_operations", "dropped_events", "limits_exceeded", "polls",
		"recoveries", "total_memory_bytes", "total_operations", "warnings",
	}, keys(mon2["statistics"].(map[string]any)))
	events := mon2["events"].([]any)
	require.NotEmpty(t, events, "acme is at 90%% of its operations")
	assert.Equal(t, []string{"component", "kind", "limit", "ratio", "refusals", "resource", "run_stops", "time", "unit", "used"},
		keys(events[0].(map[string]any)))

	ledger.ClosePeriod()
	rec = get(t, reslimithttp.Handler(ledger, mon), "/snapshot.json")
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &raw))
	tenant = raw["tenants"].([]any)[0].(map[string]any)
	assert.Equal(t, []string{
		"cpu_time_seconds", "end", "evaluations", "final", "function_calls", "number", "operations",
		"peak_memory_bytes", "start", "total_memory_bytes",
	}, keys(tenant["previous_period"].(map[string]any)))
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestSnapshotWithMonitor(t *testing.T) {
	ledger := demoLedger(t)
	mon, err := reslimit.NewMonitor(reslimit.MonitorConfig{WarningThreshold: 0.8})
	require.NoError(t, err)
	defer mon.Stop()
	for _, name := range ledger.Tenants() {
		a, _ := ledger.Lookup(name)
		require.NoError(t, mon.Register(name, a))
	}
	mon.Poll()
	// A refusal since the last poll fires limit_exceeded for the evil tenant.
	evil, _ := ledger.Lookup(evilTenant)
	_, err = evil.Begin(reslimit.Limits{})
	require.Error(t, err)
	mon.Poll()

	snap := reslimithttp.TakeSnapshot(ledger, mon)
	require.NotNil(t, snap.Monitor)
	st := snap.Monitor.Stats
	assert.Equal(t, 3, st.Components)
	assert.EqualValues(t, 2, st.Polls)
	assert.Positive(t, st.Warnings)
	assert.Positive(t, st.LimitsExceeded)

	ev := snap.Monitor.Events
	require.NotEmpty(t, ev)
	for i := 1; i < len(ev); i++ {
		assert.False(t, ev[i].Time.After(ev[i-1].Time), "newest first")
	}
	var sawEvil, sawAcme bool
	for _, e := range ev {
		assert.Contains(t, []string{"high_usage", "limit_exceeded", "recovered"}, e.Kind)
		if e.Component == evilTenant && e.Kind == "limit_exceeded" && e.Resource == "evaluations" {
			sawEvil = true
		}
		if e.Component == "acme" && e.Kind == "high_usage" && e.Resource == "operations" {
			sawAcme = true
			assert.Equal(t, "count", e.Unit)
			assert.EqualValues(t, 900, e.Used)
			assert.EqualValues(t, 1000, e.Limit)
			assert.InDelta(t, 0.9, e.Ratio, 1e-9)
		}
	}
	assert.True(t, sawEvil, "%+v", ev)
	assert.True(t, sawAcme, "%+v", ev)

	// The event text is escaped in the JSON as well.
	rec := get(t, reslimithttp.Handler(ledger, mon), "/snapshot.json")
	assert.NotContains(t, rec.Body.String(), "<script>")
}

func TestSnapshotEventsCapped(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{MaxEvaluations: 1})
	mon, err := reslimit.NewMonitor(reslimit.MonitorConfig{EventBuffer: 1})
	require.NoError(t, err)
	defer mon.Stop()
	a := ledger.Account("busy")
	require.NoError(t, mon.Register("busy", a))
	tr, err := a.Begin(reslimit.Limits{})
	require.NoError(t, err)
	tr.End()
	for range reslimithttp.MaxSnapshotEvents + 10 {
		_, err := a.Begin(reslimit.Limits{})
		require.Error(t, err)
		mon.Poll() // a new streak of refusals: one event
		mon.Poll() // a quiet poll ends the streak
	}
	snap := reslimithttp.TakeSnapshot(ledger, mon)
	assert.Len(t, snap.Monitor.Events, reslimithttp.MaxSnapshotEvents)
	assert.Positive(t, snap.Monitor.Stats.DroppedEvents)
}

func TestSnapshotEmptyLedger(t *testing.T) {
	rec := get(t, reslimithttp.Handler(mustLedger(t, reslimit.AccountLimits{}), nil), "/snapshot.json")
	require.Equal(t, http.StatusOK, rec.Code)
	body, err := io.ReadAll(rec.Body)
	require.NoError(t, err)
	assert.Contains(t, string(body), `"tenants":[]`)
	assert.Contains(t, string(body), `"monitor":null`)
	assert.True(t, strings.HasSuffix(string(body), "}\n"))

	// A nil ledger serves an empty list too.
	snap := reslimithttp.TakeSnapshot(nil, nil)
	assert.Equal(t, []reslimithttp.TenantSnapshot{}, snap.Tenants)
}
