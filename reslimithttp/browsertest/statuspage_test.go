// Package browsertest loads the reslimithttp status page in a real headless
// Chromium. It is a separate module so that the core module does not depend
// on chromedp.
//
// The test skips, saying so, only when no browser binary exists (and fails
// instead when RESLIMIT_REQUIRE_BROWSER is set, as CI does); set
// RESLIMIT_CHROMIUM to the browser's path to choose one, and
// RESLIMIT_SCREENSHOT to a file path to keep a screenshot of the page.
package browsertest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimithttp"
)

const evilTenant = `<script>alert(1)</script>`

// browserCandidates are tried in order when RESLIMIT_CHROMIUM is not set.
var browserCandidates = []string{"/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}

func findBrowser() string {
	if p := os.Getenv("RESLIMIT_CHROMIUM"); p != "" {
		return p
	}
	for _, c := range browserCandidates {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	return ""
}

// fixture is a ledger with three tenants and a monitor that has seen them.
type fixture struct {
	ledger  *reslimit.Ledger
	monitor *reslimit.Monitor
}

func run(t *testing.T, a *reslimit.Account, ops int64, mem int64, cpu time.Duration) {
	t.Helper()
	tr, err := a.Begin(reslimit.Limits{})
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(ops))
	if mem > 0 {
		require.NoError(t, tr.TrackMemory(mem))
	}
	require.NoError(t, tr.AddCPUTime(cpu))
	tr.End()
}

// periodEnd is when the fixture's ledger's schedule closes its period.
var periodEnd = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func newFixture(t *testing.T) *fixture {
	ledger := mustLedger(t, reslimit.AccountLimits{MaxEvaluations: 10, MaxTotalOperations: 1000},
		reslimit.WithPeriodSchedule(func(time.Time) time.Time { return periodEnd }))
	t.Cleanup(func() { require.NoError(t, ledger.Close(context.Background())) })
	mon, err := reslimit.NewMonitor(reslimit.MonitorConfig{})
	require.NoError(t, err)
	t.Cleanup(mon.Stop)

	// A first period, closed: the page shows its line.
	acme := ledger.Account("acme")
	run(t, acme, 50, 0, 0)
	ledger.ClosePeriod()

	require.NoError(t, acme.SetLimit(reslimit.CPUTime, int64(2*time.Second)))
	require.NoError(t, acme.SetLimit(reslimit.TotalMemory, 4<<20))
	beta := ledger.Account("beta")
	evil := ledger.Account(evilTenant)
	require.NoError(t, evil.SetLimit(reslimit.Evaluations, 2))
	for _, name := range ledger.Tenants() {
		a, _ := ledger.Lookup(name)
		require.NoError(t, mon.Register(name, a))
	}
	mon.Poll()

	for range 3 {
		run(t, acme, 300, 1<<20, 400*time.Millisecond) // 900/1000 ops, 3/4 MiB, 1.2/2 s
	}
	run(t, beta, 100, 0, 0)
	stopped, err := beta.Begin(reslimit.Limits{MaxOperations: 5})
	require.NoError(t, err)
	stopped.EndWithError(stopped.TrackOperations(6)) // stopped by its own limit
	run(t, evil, 10, 0, 0)
	run(t, evil, 10, 0, 0)
	_, err = evil.Begin(reslimit.Limits{})
	require.Error(t, err, "the evil tenant is out of evaluations")
	mon.Poll()
	return &fixture{ledger: ledger, monitor: mon}
}

// barInfo and rowInfo are what the page shows, read from its DOM.
type barInfo struct {
	Resource string `json:"resource"`
	Used     string `json:"used"`
	Limit    string `json:"limit"`
	Level    string `json:"level"`
	Text     string `json:"text"`
	Width    string `json:"width"`
}

type rowInfo struct {
	Name        string    `json:"name"`
	Evaluations string    `json:"evaluations"`
	Exhausted   bool      `json:"exhausted"`
	Bars        []barInfo `json:"bars"`
	Stops       string    `json:"stops"`
	Period      string    `json:"period"`
	PeriodEnd   string    `json:"periodEnd"`
	PeriodText  string    `json:"periodText"`
	Previous    string    `json:"previous"`
	PrevNumber  string    `json:"prevNumber"`
}

type pageInfo struct {
	Rows          []rowInfo         `json:"rows"`
	Events        []string          `json:"events"`
	Stats         map[string]string `json:"stats"`
	Scripts       int               `json:"scripts"`
	EscapedInHTML bool              `json:"escapedInHTML"`
	Status        string            `json:"status"`
}

const readPage = `(() => {
  const text = (root, sel) => { const e = root.querySelector(sel); return e ? e.textContent : ""; };
  const rows = [...document.querySelectorAll("#tenants tr.tenant")].map(tr => ({
    name: text(tr, ".tenant-name"),
    evaluations: text(tr, ".evaluations"),
    exhausted: tr.querySelector(".badge.exhausted") !== null,
    bars: [...tr.querySelectorAll(".bar")].map(b => ({
      resource: b.dataset.resource, used: b.dataset.used, limit: b.dataset.limit,
      level: b.dataset.level, text: text(b, ".value"), width: b.querySelector(".fill").style.width,
    })),
    stops: text(tr, ".stops"),
    period: tr.querySelector("td.period").dataset.period,
    periodEnd: tr.querySelector("td.period").dataset.end || "",
    periodText: text(tr, "td.period"),
    previous: text(tr, ".previous"),
    prevNumber: (tr.querySelector(".previous") || {dataset: {}}).dataset.number || "",
  }));
  const events = [...document.querySelectorAll("#events tr.event")].map(tr => tr.textContent);
  const stats = {};
  document.querySelectorAll("#stats .stat").forEach(s => { stats[s.dataset.stat] = text(s, ".v"); });
  return {
    rows, events, stats,
    scripts: document.querySelectorAll("script").length,
    escapedInHTML: document.getElementById("tenants").innerHTML.includes("&lt;script&gt;alert(1)&lt;/script&gt;"),
    status: document.getElementById("status").textContent,
  };
})()`

func TestStatusPageInBrowser(t *testing.T) {
	browser := requireBrowser(t)
	f := newFixture(t)
	mux := http.NewServeMux()
	mux.Handle("/debug/reslimit/", http.StripPrefix("/debug/reslimit", reslimithttp.Handler(f.ledger, f.monitor)))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	bctx, cancelBrowser := startBrowser(t, ctx, browser)
	defer cancelBrowser()
	w := watchPage(bctx)
	defer w.stop()

	// The bare mount point redirects to the page; wait for the bars.
	require.NoError(t, chromedp.Do(bctx,
		chromedp.Navigate(srv.URL+"/debug/reslimit"),
		chromedp.WaitVisible(chromedp.CSS(`#tenants tr.tenant .bar .fill`)),
	))
	info, err := chromedp.Run(bctx, chromedp.Evaluate[pageInfo](readPage))
	require.NoError(t, err)
	location, err := chromedp.Run(bctx, chromedp.Location())
	require.NoError(t, err)
	assert.Equal(t, srv.URL+"/debug/reslimit/", location)

	checkTenantRows(t, info)
	checkMonitor(t, info)
	checkRefresh(t, bctx, f, info)
	saveScreenshot(t, bctx)
	w.check(t)
}

// requireBrowser returns the browser to run, skipping the test when there
// is none (failing it instead when RESLIMIT_REQUIRE_BROWSER is set).
func requireBrowser(t *testing.T) string {
	browser := findBrowser()
	if browser == "" && os.Getenv("RESLIMIT_REQUIRE_BROWSER") != "" {
		t.Fatalf("RESLIMIT_REQUIRE_BROWSER is set but no Chromium or Chrome binary was found; looked for %v", browserCandidates)
	}
	if browser == "" {
		t.Skipf("no Chromium or Chrome binary found (set RESLIMIT_CHROMIUM, or install one, e.g. apt-get install chromium); looked for %v", browserCandidates)
	}
	return browser
}

// startBrowser starts a headless browser and returns its context, and the
// function that stops it.
func startBrowser(t *testing.T, ctx context.Context, browser string) (context.Context, context.CancelFunc) {
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(browser),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	return bctx, func() { cancelBrowser(); cancelAlloc() }
}

// pageWatch records the page's dialogs (an alert from an injected script),
// which it dismisses so that the page does not hang, and its console
// errors and exceptions.
type pageWatch struct {
	stopListening context.CancelFunc
	wg            sync.WaitGroup

	mu       sync.Mutex
	dialogs  []string
	messages []string
}

// watchPage starts watching the page of bctx; stop ends it.
func watchPage(bctx context.Context) *pageWatch {
	w := &pageWatch{}
	lctx, stopListening := context.WithCancel(bctx)
	w.stopListening = stopListening
	dialogEvents := chromedp.Events(lctx, page.JavascriptDialogOpening)
	messages := chromedp.Console(lctx)
	w.wg.Go(func() {
		for ev, err := range dialogEvents {
			if err != nil {
				return
			}
			w.mu.Lock()
			w.dialogs = append(w.dialogs, ev.Message)
			w.mu.Unlock()
			_, _ = chromedp.Call(lctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		}
	})
	w.wg.Go(func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.IsException() || m.Type == chromedp.ConsoleError {
				w.mu.Lock()
				w.messages = append(w.messages, m.String())
				w.mu.Unlock()
			}
		}
	})
	return w
}

func (w *pageWatch) stop() {
	w.stopListening()
	w.wg.Wait()
}

// check asserts that no alert fired and nothing was logged as an error.
func (w *pageWatch) check(t *testing.T) {
	w.mu.Lock()
	defer w.mu.Unlock()
	assert.Empty(t, w.dialogs, "no alert fired")
	assert.Empty(t, w.messages, "no console error or exception")
}

// checkTenantRows: tenant rows, sorted by name, the evil name shown as
// plain text, and their bars.
func checkTenantRows(t *testing.T, info pageInfo) {
	require.Len(t, info.Rows, 3, "%+v", info.Rows)
	assert.Equal(t, []string{evilTenant, "acme", "beta"}, []string{info.Rows[0].Name, info.Rows[1].Name, info.Rows[2].Name})
	assert.Equal(t, 1, info.Scripts, "no script element was injected")
	assert.True(t, info.EscapedInHTML, "the tenant name is serialised as escaped text")

	evil, acme := info.Rows[0], info.Rows[1]
	assert.True(t, evil.Exhausted)
	assert.False(t, acme.Exhausted)
	assert.Equal(t, "3", acme.Evaluations)

	bars := barsByResource(acme)
	assert.Equal(t, barInfo{Resource: "operations", Used: "900", Limit: "1000", Level: "high", Text: "900 / 1,000 (90%)", Width: "90%"}, bars["operations"])
	assert.Equal(t, barInfo{Resource: "evaluations", Used: "3", Limit: "10", Level: "ok", Text: "3 / 10 (30%)", Width: "30%"}, bars["evaluations"])
	assert.Equal(t, "3.0 MiB / 4.0 MiB (75%)", bars["total_memory"].Text)
	assert.Equal(t, "warn", bars["total_memory"].Level)
	assert.Equal(t, "1.20 s / 2.00 s (60%)", bars["cpu_time"].Text)
	assert.Equal(t, "ok", bars["cpu_time"].Level)

	evilBars := barsByResource(evil)
	assert.Equal(t, "full", evilBars["evaluations"].Level)
	assert.Equal(t, "100%", evilBars["evaluations"].Width)
	assert.Equal(t, "2 / 2 (100%)", evilBars["evaluations"].Text)

	// The period: its number, scheduled close, and the previous period's
	// line (acme's only: the others had none).
	beta := info.Rows[2]
	for _, r := range info.Rows {
		assert.Equal(t, "2", r.Period, r.Name)
		assert.Equal(t, "2030-01-01T00:00:00Z", r.PeriodEnd, r.Name)
		assert.Contains(t, r.PeriodText, "#2", r.Name)
		assert.Contains(t, r.PeriodText, "closes ", r.Name)
	}
	assert.Equal(t, "1", acme.PrevNumber)
	assert.Equal(t, "previous #1: 1 evaluations, 50 operations, 0 s cpu", acme.Previous)
	assert.Empty(t, beta.PrevNumber)
	// Runs stopped by their own limits.
	assert.Equal(t, "runs stopped by their limits — operations: 1", beta.Stops)
	assert.Empty(t, acme.Stops)
}

func barsByResource(row rowInfo) map[string]barInfo {
	bars := map[string]barInfo{}
	for _, b := range row.Bars {
		bars[b.Resource] = b
	}
	return bars
}

// checkMonitor: the monitor's statistics and events.
func checkMonitor(t *testing.T, info pageInfo) {
	assert.Equal(t, "3", info.Stats["components"])
	assert.NotEqual(t, "0", info.Stats["warnings"], "%v", info.Stats)
	assert.NotEqual(t, "0", info.Stats["limits exceeded"], "%v", info.Stats)
	require.NotEmpty(t, info.Events)
	var sawEvil, sawStop bool
	for _, e := range info.Events {
		if strings.Contains(e, evilTenant) && strings.Contains(e, "limit exceeded") {
			sawEvil = true
		}
		if strings.Contains(e, "beta") && strings.Contains(e, "run stopped") && strings.Contains(e, "1 run stopped") {
			sawStop = true
		}
	}
	assert.True(t, sawEvil, "an event names the evil tenant, as text: %q", info.Events)
	assert.True(t, sawStop, "beta's run stop is an event: %q", info.Events)
}

// checkRefresh: the page refreshes by itself, so new usage shows up
// without a reload. before is the page read before the new usage.
func checkRefresh(t *testing.T, bctx context.Context, f *fixture, before pageInfo) {
	bAcct, _ := f.ledger.Lookup("beta")
	run(t, bAcct, 400, 0, 0)
	used, err := chromedp.Run(bctx, chromedp.Poll[string](
		`(document.querySelector('#tenants tr.tenant[data-tenant="beta"] .bar[data-resource="operations"]') || {dataset: {}}).dataset.used === "500" && "500"`,
		chromedp.WithPollingTimeout(15*time.Second)))
	require.NoError(t, err, "the page did not refresh")
	assert.Equal(t, "500", used)
	assert.Equal(t, "2", before.Rows[2].Evaluations, "before the refresh")
}

// saveScreenshot takes a screenshot of the page, into the test's temporary
// directory and RESLIMIT_SCREENSHOT when set.
func saveScreenshot(t *testing.T, bctx context.Context) {
	shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.Greater(t, len(shot), 1000)
	dst := filepath.Join(t.TempDir(), "status-page.png")
	require.NoError(t, os.WriteFile(dst, shot, 0o644))
	t.Logf("screenshot: %s", dst)
	if p := os.Getenv("RESLIMIT_SCREENSHOT"); p != "" {
		require.NoError(t, os.WriteFile(p, shot, 0o644))
		t.Logf("screenshot: %s", p)
	}
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
