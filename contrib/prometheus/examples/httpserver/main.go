// Command httpserver is a small HTTP service limited per tenant with
// reslimit: the reslimithttp middleware on a toy endpoint, the live status
// page at /debug/reslimit/ and Prometheus metrics at /metrics.
//
// It lives in the contrib/prometheus module, so that /metrics is served by
// the real collector while the core module stays free of client_golang.
//
//	go run ./examples/httpserver                 # serve on 127.0.0.1:8080
//	go run ./examples/httpserver -demo           # drive traffic at itself for a few seconds, print a summary, exit
//	go run ./examples/httpserver -demo -linger 1m  # ... then keep serving, to look at the page
//
// Tenants are chosen by the X-API-Key header:
//
//	key-free   free    50 requests, 50,000 operations in all, 2 at once
//	key-pro    pro     10,000,000 operations, 2 s of CPU, 8 at once
//	key-trial  trial   20 requests
//
// The quotas reset every -period (default 1m), counted from the start: the
// ledger closes every tenant's billing period on that schedule, the status
// page shows the period and the previous one's line, and a refused tenant
// gets Retry-After until the next close. Every request may run 500 ms, 200,000
// operations, hold 8 MiB and send a 64 KiB body.
//
// The toy endpoint, GET or POST /api/work?n=OPS[&sleep=DURATION], counts n
// operations (with Tracker.TrackOperation), holds 8 bytes per operation (up to the
// memory limit), reads the request body, and answers with a small JSON.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/reslimit/reslimit"
	reslimitprom "github.com/reslimit/reslimit/contrib/prometheus"
	"github.com/reslimit/reslimit/reslimithttp"
)

// apiKeys maps an API key to its tenant.
var apiKeys = map[string]string{
	"key-free":  "free",
	"key-pro":   "pro",
	"key-trial": "trial",
}

// tenantLimits are the demo tenants' account limits.
var tenantLimits = map[string]reslimit.AccountLimits{
	"free":  {MaxEvaluations: 50, MaxTotalOperations: 50_000, MaxConcurrent: 2},
	"pro":   {MaxTotalOperations: 10_000_000, MaxCPUTime: 2 * time.Second, MaxConcurrent: 8},
	"trial": {MaxEvaluations: 20},
}

// requestLimits bound every request.
var requestLimits = reslimit.Limits{
	Timeout:        500 * time.Millisecond,
	MaxOperations:  200_000,
	MaxMemoryBytes: 8 << 20,
	MaxFileSize:    64 << 10,
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "httpserver:", err)
		os.Exit(1)
	}
}

// run parses args, serves, and (with -demo) drives traffic and returns.
func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("httpserver", flag.ContinueOnError)
	fs.SetOutput(out)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address (host:port); with -demo and no -addr, a free port on 127.0.0.1")
	demo := fs.Bool("demo", false, "drive traffic at the server for -duration, print a summary and exit")
	duration := fs.Duration("duration", 3*time.Second, "how long -demo drives traffic")
	linger := fs.Duration("linger", 0, "with -demo, keep serving this long after the summary")
	period := fs.Duration("period", time.Minute, "how often the tenants' quotas reset")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addrSet := false
	fs.Visit(func(f *flag.Flag) { addrSet = addrSet || f.Name == "addr" })
	if *demo && !addrSet {
		*addr = "127.0.0.1:0"
	}
	if *period <= 0 || *duration <= 0 || *linger < 0 {
		return errors.New("-period and -duration must be positive, -linger not negative")
	}

	app, err := newApp(*period)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: app.mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer app.ledger.Close(context.Background()) // stops the schedule
	if err := app.monitor.Start(ctx); err != nil {
		return err
	}
	defer app.monitor.Stop()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	base := "http://" + ln.Addr().String()
	fmt.Fprintf(out, "serving on %s\n  status page  %s/debug/reslimit/\n  metrics      %s/metrics\n  toy endpoint %s/api/work?n=1000 (header X-API-Key: key-free, key-pro or key-trial)\n",
		ln.Addr(), base, base, base)

	if *demo {
		err = driveDemo(ctx, base, *duration, out)
		if err == nil && *linger > 0 {
			fmt.Fprintf(out, "\nserving for %v more; open %s/debug/reslimit/\n", *linger, base)
			select {
			case <-time.After(*linger):
			case <-ctx.Done():
			}
		}
	} else {
		select {
		case <-ctx.Done():
		case err = <-serveErr:
		}
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if serr := srv.Shutdown(sctx); serr != nil && err == nil {
		err = serr
	}
	return err
}

// app is the server's state: the ledger of tenants, the monitor and the
// routes.
type app struct {
	ledger  *reslimit.Ledger
	monitor *reslimit.Monitor
	mux     *http.ServeMux
}

// newApp returns the app; its ledger closes the tenants' periods every
// period from now until it is closed.
func newApp(period time.Duration) (*app, error) {
	start := time.Now()
	next := func(now time.Time) time.Time { return start.Add((now.Sub(start)/period + 1) * period) }
	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{}, reslimit.WithPeriodSchedule(next))
	if err != nil {
		return nil, err
	}
	a := &app{ledger: ledger}
	mon, err := reslimit.NewMonitor(reslimit.MonitorConfig{CheckInterval: 250 * time.Millisecond})
	if err != nil {
		return nil, err
	}
	a.monitor = mon
	for name, l := range tenantLimits {
		acct := a.ledger.Account(name)
		for r, v := range accountLimitValues(l) {
			if err := acct.SetLimit(r, v); err != nil {
				return nil, err
			}
		}
		if err := mon.Register(name, acct); err != nil {
			return nil, err
		}
	}

	collector, err := reslimitprom.NewCollector(a.ledger, reslimitprom.WithMonitor(mon))
	if err != nil {
		return nil, err
	}
	reg := prom.NewRegistry()
	reg.MustRegister(collector)

	limited, err := reslimithttp.Middleware(a.ledger, tenantFromKey, requestLimits,
		reslimithttp.WithResetTime(func(string) time.Time { return next(time.Now()) })) // the ledger's schedule
	if err != nil {
		return nil, err
	}
	a.mux = http.NewServeMux()
	a.mux.Handle("/api/work", limited(http.HandlerFunc(work)))
	a.mux.Handle("/debug/reslimit/", http.StripPrefix("/debug/reslimit", reslimithttp.Handler(a.ledger, mon)))
	a.mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	a.mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/debug/reslimit/", http.StatusFound)
	})
	return a, nil
}

// accountLimitValues lists the limits set in l, by resource.
func accountLimitValues(l reslimit.AccountLimits) map[reslimit.Resource]int64 {
	m := map[reslimit.Resource]int64{
		reslimit.Memory:      l.MaxMemory,
		reslimit.TotalMemory: l.MaxTotalMemory,
		reslimit.Operations:  l.MaxTotalOperations,
		reslimit.Calls:       l.MaxCalls,
		reslimit.CPUTime:     int64(l.MaxCPUTime),
		reslimit.Evaluations: l.MaxEvaluations,
		reslimit.Concurrency: l.MaxConcurrent,
	}
	for r, v := range m {
		if v == 0 {
			delete(m, r)
		}
	}
	return m
}

func tenantFromKey(r *http.Request) (string, error) {
	if t, ok := apiKeys[r.Header.Get("X-API-Key")]; ok {
		return t, nil
	}
	return "", errors.New("unknown API key")
}

// work is the toy endpoint.
func work(w http.ResponseWriter, r *http.Request) {
	tr := reslimit.FromContext(r.Context())
	n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
	n = max(n, 0)
	body, err := io.ReadAll(r.Body) // through LimitReader: 413 past 64 KiB
	if err != nil {
		reslimithttp.Error(w, r, err)
		return
	}
	mem, err := tr.AcquireMemory(min(8*n, 1<<30))
	if err != nil {
		reslimithttp.Error(w, r, err)
		return
	}
	defer mem.Release()
	if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil && d > 0 {
		select { // the request's Timeout cancels the context
		case <-time.After(d):
		case <-r.Context().Done():
			return // the middleware answers 503
		}
	}
	var sum uint64
	for i := range n {
		if err := tr.TrackOperation(); err != nil {
			reslimithttp.Error(w, r, err)
			return
		}
		sum += uint64(i) * uint64(i)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"tenant": reslimithttp.Tenant(r), "operations": n, "body_bytes": len(body), "sum": sum,
	})
}

// scenario is one kind of demo client.
type scenario struct {
	name    string
	key     string
	workers int
	next    func(rng *rand.Rand) (query string, body int)
}

var scenarios = []scenario{
	{"free", "key-free", 3, func(*rand.Rand) (string, int) { return "n=2000", 0 }},
	{"pro", "key-pro", 3, func(rng *rand.Rand) (string, int) {
		switch rng.IntN(30) {
		case 0:
			return "n=500000", 0 // over the request's 200,000 operations: 503
		case 1:
			return "n=10&sleep=2s", 0 // over the request's 500 ms: 503
		default:
			return "n=" + strconv.Itoa(1000+rng.IntN(20_000)), 0
		}
	}},
	{"trial", "key-trial", 2, func(rng *rand.Rand) (string, int) {
		if rng.IntN(4) == 0 {
			return "n=100", 100 << 10 // over the 64 KiB body limit: 413
		}
		return "n=100", 1 << 10
	}},
	{"unknown key", "key-nope", 1, func(*rand.Rand) (string, int) { return "n=1", 0 }},
}

// driveDemo sends requests from every scenario's workers for d (at most
// 400 requests per worker), then prints what happened.
func driveDemo(ctx context.Context, base string, d time.Duration, out io.Writer) error {
	fmt.Fprintf(out, "\ndriving traffic for %v ...\n", d)
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(d)
	res := &demoResults{tallies: map[string]*tally{}}
	var wg sync.WaitGroup
	for i, sc := range scenarios {
		res.tallies[sc.name] = &tally{codes: map[int]int{}}
		for w := range sc.workers {
			rng := rand.New(rand.NewPCG(uint64(i), uint64(w)))
			wg.Go(func() { demoClient(ctx, client, base, sc, rng, deadline, res) })
		}
	}
	wg.Wait()
	if res.firstErr != nil {
		return res.firstErr
	}
	if err := res.print(out); err != nil {
		return err
	}
	fmt.Fprintln(out, "\nfrom /metrics:")
	return printMetrics(ctx, client, base, out)
}

// tally is what one scenario's clients got.
type tally struct {
	codes      map[int]int
	retryAfter string
	lastError  string
}

// demoResults is what every scenario's clients got, by scenario name.
type demoResults struct {
	mu       sync.Mutex
	tallies  map[string]*tally
	firstErr error // the first request that failed (not by ctx)
}

// demoClient sends sc's requests until deadline or ctx ends (at most
// 400), pausing between them, and records the answers in res.
func demoClient(ctx context.Context, client *http.Client, base string, sc scenario, rng *rand.Rand, deadline time.Time, res *demoResults) {
	for range 400 {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return
		}
		q, size := sc.next(rng)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/work?"+q, strings.NewReader(strings.Repeat("x", size)))
		if err != nil {
			return
		}
		req.Header.Set("X-API-Key", sc.key)
		resp, err := client.Do(req)
		if err != nil {
			res.fail(ctx, err)
			return
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		_ = resp.Body.Close()
		res.record(sc.name, resp, b)
		pause := time.Duration(5+rng.IntN(15)) * time.Millisecond
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusUnauthorized {
			pause = 100 * time.Millisecond // a polite client backs off
		}
		time.Sleep(pause)
	}
}

// fail records a request that got no answer, unless ctx ended.
func (r *demoResults) fail(ctx context.Context, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.firstErr == nil && ctx.Err() == nil {
		r.firstErr = err
	}
}

// record counts an answer to scenario name: its status, its Retry-After,
// and, for a refusal, its ErrorBody.
func (r *demoResults) record(name string, resp *http.Response, body []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.tallies[name]
	t.codes[resp.StatusCode]++
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		t.retryAfter = ra
	}
	if resp.StatusCode != http.StatusOK {
		var eb reslimithttp.ErrorBody
		if json.Unmarshal(body, &eb) == nil {
			t.lastError = fmt.Sprintf("%d %s", resp.StatusCode, describe(eb))
		}
	}
}

// print writes the responses by client, as a table, and a refusal of each.
func (r *demoResults) print(out io.Writer) error {
	fmt.Fprintln(out, "\nresponses by client:")
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "client\trequests\t200\t401\t413\t429\t503\tRetry-After\t")
	for _, sc := range scenarios {
		t := r.tallies[sc.name]
		total := 0
		for _, n := range t.codes {
			total += n
		}
		ra := t.retryAfter
		if ra == "" {
			ra = "-"
		} else {
			ra += " s"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t\n", sc.name, total,
			t.codes[200], t.codes[401], t.codes[413], t.codes[429], t.codes[503], ra)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out, "\nan example refusal per client:")
	for _, sc := range scenarios {
		if e := r.tallies[sc.name].lastError; e != "" {
			fmt.Fprintf(out, "  %-12s %s\n", sc.name, e)
		}
	}
	return nil
}

func describe(eb reslimithttp.ErrorBody) string {
	if eb.Error != "limit_exceeded" {
		return eb.Error
	}
	unit := ""
	switch eb.Unit {
	case "seconds":
		unit = " s"
	case "bytes":
		unit = " B"
	}
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) + unit }
	return fmt.Sprintf("%s %s limit %s (used %s)", eb.Scope, eb.Resource, f(eb.Limit), f(eb.Used))
}

// printMetrics shows the interesting lines of /metrics.
func printMetrics(ctx context.Context, client *http.Client, base string, out io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(l, "reslimit_tenant_evaluations_total"),
			strings.HasPrefix(l, "reslimit_tenant_refusals_total") && !strings.HasSuffix(l, " 0"),
			strings.HasPrefix(l, "reslimit_run_stops_total") && !strings.HasSuffix(l, " 0"),
			strings.HasPrefix(l, "reslimit_tenant_period{"),
			strings.HasPrefix(l, "reslimit_tenant_usage{resource=\"operations\""),
			strings.HasPrefix(l, "reslimit_monitor_") && strings.Contains(l, "_total"):
			lines = append(lines, l)
		}
	}
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Fprintln(out, "  "+l)
	}
	return nil
}
