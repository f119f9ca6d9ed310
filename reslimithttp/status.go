package reslimithttp

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/internal/resinfo"
)

// SnapshotVersion is the Version of the Snapshot schema served by Handler.
// It changes only if a field changes meaning or is removed; new fields may
// be added within a version.
const SnapshotVersion = 1

// MaxSnapshotEvents is how many of the monitor's latest events a Snapshot
// carries.
const MaxSnapshotEvents = 50

// Snapshot is the document served at snapshot.json by Handler. Field names
// are stable and snake_case. Every byte count is in bytes; every duration
// is in seconds, as a JSON number with a fraction (field names end in
// _seconds, or the value's unit is "seconds"); resources are named by
// reslimit.Resource.String ("memory", "total_memory", "cpu_time",
// "operations", "concurrent_operations", "function_calls", "evaluations",
// ...); times are RFC 3339 strings.
//
// Example:
//
//	{
//	  "version": 1,
//	  "time": "2025-01-02T15:04:05.123Z",
//	  "tenants": [{
//	    "name": "acme", "evaluations": 12, "running": 1, "exhausted": false,
//	    "memory_bytes": 0, "peak_memory_bytes": 4096, "total_memory_bytes": 8192,
//	    "operations": 950, "function_calls": 3, "cpu_time_seconds": 0.012,
//	    "limits": [{"resource": "operations", "unit": "count",
//	                "used": 950, "limit": 1000, "remaining": 50, "ratio": 0.95}],
//	    "refusals": {"evaluations": 2}, "run_stops": {"memory": 1, "timeout": 3},
//	    "period": 2, "period_start": "2025-01-02T00:00:00Z", "period_end": "2025-01-03T00:00:00Z",
//	    "previous_period": {"number": 1, "start": "2025-01-01T00:00:00Z", "end": "2025-01-02T00:00:00Z",
//	                        "evaluations": 40, "operations": 3100, "function_calls": 12,
//	                        "total_memory_bytes": 65536, "peak_memory_bytes": 4096,
//	                        "cpu_time_seconds": 0.25, "final": true}
//	  }],
//	  "monitor": {
//	    "statistics": {"components": 3, "total_memory_bytes": 0, "total_operations": 1200,
//	                   "concurrent_operations": 1, "warnings": 2, "limits_exceeded": 1,
//	                   "recoveries": 0, "dropped_events": 0, "polls": 40},
//	    "events": [{"time": "2025-01-02T15:04:05Z", "component": "acme",
//	                "resource": "operations", "kind": "high_usage", "unit": "count",
//	                "used": 950, "limit": 1000, "ratio": 0.95, "refusals": 0, "run_stops": 0}]
//	  }
//	}
type Snapshot struct {
	// Version is SnapshotVersion.
	Version int `json:"version"`
	// Time is when the snapshot was taken.
	Time time.Time `json:"time"`
	// Tenants has one entry per account in the ledger, sorted by name
	// ([] when there is none).
	Tenants []TenantSnapshot `json:"tenants"`
	// Monitor is null when Handler was given no monitor.
	Monitor *MonitorSnapshot `json:"monitor"`
}

// TenantSnapshot is one tenant's account (reslimit.AccountStats). The
// usage, the evaluations and the limits' Used are the open billing
// period's: they start over at each close (PreviousPeriod keeps the last
// one); Refusals and RunStops are never cleared.
type TenantSnapshot struct {
	// Name is the tenant's name, as given to the ledger (not escaped: the
	// page renders it as text).
	Name string `json:"name"`
	// Evaluations counts the runs started in the open period.
	Evaluations int64 `json:"evaluations"`
	// Running is the number of runs in progress now.
	Running int64 `json:"running"`
	// Exhausted is true when some cumulative limit has no room left.
	Exhausted bool `json:"exhausted"`
	// MemoryBytes is held now by the tenant's runs.
	MemoryBytes int64 `json:"memory_bytes"`
	// PeakMemoryBytes is the most held at once.
	PeakMemoryBytes int64 `json:"peak_memory_bytes"`
	// TotalMemoryBytes is every byte charged, cumulatively.
	TotalMemoryBytes int64 `json:"total_memory_bytes"`
	// Operations and Calls are cumulative counts.
	Operations int64 `json:"operations"`
	Calls      int64 `json:"function_calls"`
	// CPUTimeSeconds is the CPU time used, cumulatively.
	CPUTimeSeconds float64 `json:"cpu_time_seconds"`
	// Limits has one entry per resource with a limit, in the order of
	// reslimit.Resources() ([] when none), then one per rate: its bucket,
	// in tokens (Limit the burst; with a store, fleet-wide).
	Limits []LimitSnapshot `json:"limits"`
	// Refusals counts the requests refused by the tenant's limits, by
	// resource name (only resources with refusals; {} when none).
	Refusals map[string]int64 `json:"refusals"`
	// RunStops counts the tenant's runs stopped by their own per-run
	// limits, by resource name (reslimit.AccountStats.RunStops: only
	// resources with stops; {} when none).
	RunStops map[string]int64 `json:"run_stops"`
	// Period is the open billing period's number (1 for the first),
	// PeriodStart its start, and PeriodEnd its scheduled close (null
	// unless the ledger closes periods on a schedule: WithPeriod,
	// WithPeriodSchedule).
	Period      uint64     `json:"period"`
	PeriodStart time.Time  `json:"period_start"`
	PeriodEnd   *time.Time `json:"period_end"`
	// PreviousPeriod is the tenant's latest closed period that the ledger
	// keeps (its line in Ledger.Periods), or null.
	PreviousPeriod *PeriodSnapshot `json:"previous_period"`
}

// PeriodSnapshot is one closed billing period of a tenant: its invoice
// line (reslimit.Period). With a fleet Store it is this replica's line.
type PeriodSnapshot struct {
	Number uint64    `json:"number"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	// Evaluations, Operations, Calls, TotalMemoryBytes and CPUTimeSeconds
	// are what the period was charged; PeakMemoryBytes is the most held
	// at once in it.
	Evaluations      int64   `json:"evaluations"`
	Operations       int64   `json:"operations"`
	Calls            int64   `json:"function_calls"`
	TotalMemoryBytes int64   `json:"total_memory_bytes"`
	PeakMemoryBytes  int64   `json:"peak_memory_bytes"`
	CPUTimeSeconds   float64 `json:"cpu_time_seconds"`
	// Final is false while replicas may still report usage of the period.
	Final bool `json:"final"`
}

// LimitSnapshot is one limited resource of a tenant.
type LimitSnapshot struct {
	// Resource is the resource's name.
	Resource string `json:"resource"`
	// Unit is the unit of Used, Limit and Remaining: "bytes", "count" or
	// "seconds".
	Unit string `json:"unit"`
	// Used, Limit and Remaining (max(0, Limit-Used)) are in Unit.
	Used      float64 `json:"used"`
	Limit     float64 `json:"limit"`
	Remaining float64 `json:"remaining"`
	// Ratio is Used/Limit; it can pass 1 when a limit was lowered below
	// the usage.
	Ratio float64 `json:"ratio"`
}

// MonitorSnapshot is the monitor's part of a Snapshot.
type MonitorSnapshot struct {
	// Stats are the monitor's totals and event counters.
	Stats StatsSnapshot `json:"statistics"`
	// Events are the monitor's latest events (at most MaxSnapshotEvents),
	// newest first ([] when none).
	Events []EventSnapshot `json:"events"`
}

// StatsSnapshot is reslimit.MonitorStats without the per-component
// details; each field is the reslimit.MonitorStats field of the same name.
// The event counters count every event since the monitor was created.
type StatsSnapshot struct {
	Components           int   `json:"components"`
	TotalMemoryBytes     int64 `json:"total_memory_bytes"`
	TotalOperations      int64 `json:"total_operations"`
	ConcurrentOperations int64 `json:"concurrent_operations"`
	Warnings             int64 `json:"warnings"`
	LimitsExceeded       int64 `json:"limits_exceeded"`
	Recoveries           int64 `json:"recoveries"`
	DroppedEvents        int64 `json:"dropped_events"`
	Polls                int64 `json:"polls"`
}

// EventSnapshot is one reslimit.Event.
type EventSnapshot struct {
	// Time is when the poll that saw the event started.
	Time time.Time `json:"time"`
	// Component is the name the source was registered under (for a
	// tenant's account, usually the tenant).
	Component string `json:"component"`
	// Resource is the resource's name.
	Resource string `json:"resource"`
	// Kind is "high_usage", "limit_exceeded", "recovered", "store_reset"
	// or "run_stopped".
	Kind string `json:"kind"`
	// Unit is the unit of Used and Limit: "bytes", "count" or "seconds".
	Unit string  `json:"unit"`
	Used float64 `json:"used"`
	// Limit is 0 when the resource has no limit.
	Limit float64 `json:"limit"`
	// Ratio is Used/Limit, or 0 without a limit.
	Ratio float64 `json:"ratio"`
	// Refusals is the number of refusals since the previous poll, for a
	// limit_exceeded event that reports refusals.
	Refusals int64 `json:"refusals"`
	// RunStops is the number of runs stopped since the previous poll, for
	// a run_stopped event.
	RunStops int64 `json:"run_stops"`
}

// TakeSnapshot builds the Snapshot that Handler serves. monitor may be nil.
// It reads the ledger with Ledger.Snapshot and Ledger.Periods.
func TakeSnapshot(ledger *reslimit.Ledger, monitor *reslimit.Monitor) Snapshot {
	s := Snapshot{Version: SnapshotVersion, Time: time.Now().UTC(), Tenants: []TenantSnapshot{}}
	if ledger != nil {
		stats := ledger.Snapshot()
		previous := map[string]*PeriodSnapshot{}
		for _, p := range ledger.Periods() { // oldest first: the latest line wins
			previous[p.Tenant] = periodSnapshot(p)
		}
		s.Tenants = make([]TenantSnapshot, 0, len(stats))
		for name, st := range stats {
			t := tenantSnapshot(name, st)
			t.PreviousPeriod = previous[name]
			if acct, ok := ledger.Lookup(name); ok {
				t.Limits = appendRates(t.Limits, acct)
			}
			s.Tenants = append(s.Tenants, t)
		}
		sort.Slice(s.Tenants, func(i, j int) bool { return s.Tenants[i].Name < s.Tenants[j].Name })
	}
	if monitor != nil {
		s.Monitor = monitorSnapshot(monitor)
	}
	return s
}

func tenantSnapshot(name string, st reslimit.AccountStats) TenantSnapshot {
	t := TenantSnapshot{
		Name:             name,
		Evaluations:      st.Evaluations,
		Running:          st.Running,
		Exhausted:        st.Exhausted,
		MemoryBytes:      st.MemoryBytes,
		PeakMemoryBytes:  st.PeakMemoryBytes,
		TotalMemoryBytes: st.TotalMemoryBytes,
		Operations:       st.Operations,
		Calls:            st.Calls,
		CPUTimeSeconds:   st.CPUTime.Seconds(),
		Limits:           []LimitSnapshot{},
		Refusals:         make(map[string]int64, len(st.Refusals)),
		RunStops:         make(map[string]int64, len(st.RunStops)),
		Period:           st.Period,
		PeriodStart:      st.PeriodStart.UTC(),
	}
	if !st.PeriodEnd.IsZero() {
		end := st.PeriodEnd.UTC()
		t.PeriodEnd = &end
	}
	for _, r := range reslimit.Resources() {
		ls, ok := st.LimitStatus[r]
		if !ok {
			continue
		}
		l := LimitSnapshot{
			Resource:  r.String(),
			Unit:      resinfo.Unit(r),
			Used:      resinfo.BaseValue(r, ls.Used),
			Limit:     resinfo.BaseValue(r, ls.Limit),
			Remaining: resinfo.BaseValue(r, ls.Remaining),
		}
		if ls.Limit > 0 {
			l.Ratio = float64(ls.Used) / float64(ls.Limit)
		}
		t.Limits = append(t.Limits, l)
	}
	for r, n := range st.Refusals {
		t.Refusals[r.String()] = n
	}
	for r, n := range st.RunStops {
		t.RunStops[r.String()] = n
	}
	return t
}

// appendRates appends the account's rates to limits, each as its bucket:
// Limit the burst, Used the tokens in use and Remaining the tokens left,
// in tokens ("count"). With a store that is the fleet-wide figure (the
// store's bucket by its last answer, plus this replica's lease).
func appendRates(limits []LimitSnapshot, acct *reslimit.Account) []LimitSnapshot {
	var buf [16]reslimit.Reading
	for _, rd := range acct.AppendReadings(buf[:0]) {
		if (rd.Resource != reslimit.EvaluationRate && rd.Resource != reslimit.OperationRate) || rd.Limit <= 0 {
			continue
		}
		limits = append(limits, LimitSnapshot{
			Resource: rd.Resource.String(), Unit: "count",
			Used: float64(rd.Used), Limit: float64(rd.Limit), Remaining: float64(max(0, rd.Limit-rd.Used)),
			Ratio: float64(rd.Used) / float64(rd.Limit),
		})
	}
	return limits
}

func periodSnapshot(p reslimit.Period) *PeriodSnapshot {
	return &PeriodSnapshot{
		Number: p.Number, Start: p.Start.UTC(), End: p.End.UTC(),
		Evaluations: p.Evaluations, Operations: p.Operations, Calls: p.Calls,
		TotalMemoryBytes: p.TotalMemory, PeakMemoryBytes: p.PeakMemoryBytes,
		CPUTimeSeconds: p.CPUTime.Seconds(), Final: p.Final,
	}
}

func monitorSnapshot(m *reslimit.Monitor) *MonitorSnapshot {
	st := m.Stats()
	ms := &MonitorSnapshot{
		Stats: StatsSnapshot{
			Components:           st.Components,
			TotalMemoryBytes:     st.TotalMemoryBytes,
			TotalOperations:      st.TotalOperations,
			ConcurrentOperations: st.ConcurrentOperations,
			Warnings:             st.Warnings,
			LimitsExceeded:       st.LimitsExceeded,
			Recoveries:           st.Recoveries,
			DroppedEvents:        st.DroppedEvents,
			Polls:                st.Polls,
		},
		Events: []EventSnapshot{},
	}
	hist := m.History()
	for i := len(hist) - 1; i >= 0 && len(ms.Events) < MaxSnapshotEvents; i-- {
		e := hist[i]
		ms.Events = append(ms.Events, EventSnapshot{
			Time:      e.Time.UTC(),
			Component: e.Component,
			Resource:  e.Resource.String(),
			Kind:      e.Kind.String(),
			Unit:      resinfo.Unit(e.Resource),
			Used:      resinfo.BaseValue(e.Resource, e.Used),
			Limit:     resinfo.BaseValue(e.Resource, e.Limit),
			Ratio:     e.Ratio,
			Refusals:  e.Refusals,
			RunStops:  e.RunStops,
		})
	}
	return ms
}

//go:embed status.html
var statusPage []byte

// contentSecurityPolicy allows only the page's own inline script and
// style (by hash) and fetches from the same origin.
var contentSecurityPolicy = func() string {
	hash := func(tag string) string {
		re := regexp.MustCompile(`(?s)<` + tag + `>(.*?)</` + tag + `>`)
		m := re.FindSubmatch(statusPage)
		if m == nil {
			panic("reslimithttp: status page has no <" + tag + ">")
		}
		sum := sha256.Sum256(m[1])
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	return "default-src 'none'; script-src " + hash("script") + "; style-src " + hash("style") +
		"; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}()

// Handler returns the live status page of ledger (and of monitor, which may
// be nil), meant to be mounted like net/http/pprof:
//
//	mux.Handle("/debug/reslimit/", http.StripPrefix("/debug/reslimit", reslimithttp.Handler(ledger, monitor)))
//
// or without StripPrefix (mux.Handle("/debug/reslimit/", h)); it only
// looks at the last element of the path. It serves, for GET and HEAD:
//
//   - ".../" (a path ending in "/", or empty): a self-contained HTML page
//     (no external script, style or font) showing every tenant with a bar
//     per limited resource, coloured by how close the usage is to the
//     limit, its refusals and run stops, its billing period (number,
//     start, scheduled close) and previous period's line, the monitor's
//     statistics and latest events. It refreshes
//     itself every few seconds from snapshot.json, relative to its own URL.
//     A path without a trailing slash is redirected to one.
//   - ".../snapshot.json": the Snapshot, as JSON.
//
// Other methods get 405. The page builds its DOM with textContent, never
// from HTML strings, and is served with a Content-Security-Policy that
// allows only its own inline script, so tenant names and event text cannot
// inject markup. The handler exposes tenant names and usage: mount it where
// only operators can reach it. It is safe for concurrent use.
func Handler(ledger *reslimit.Ledger, monitor *reslimit.Monitor) http.Handler {
	return &statusHandler{ledger: ledger, monitor: monitor}
}

type statusHandler struct {
	ledger  *reslimit.Ledger
	monitor *reslimit.Monitor
}

func (h *statusHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	p := r.URL.Path
	if path.Base(p) == "snapshot.json" && !strings.HasSuffix(p, "/") {
		writeJSON(w, http.StatusOK, TakeSnapshot(h.ledger, h.monitor))
		return
	}
	// The page fetches snapshot.json relative to its URL, so that URL must
	// end in a slash. Look at the path the client asked for, since
	// StripPrefix may have removed it.
	orig := r.URL.Path
	if u, err := url.ParseRequestURI(r.RequestURI); err == nil && r.RequestURI != "" {
		orig = u.Path
	}
	if !strings.HasSuffix(orig, "/") {
		// A relative Location ("./reslimit/"): correct under StripPrefix
		// too, and never a redirect to another host.
		target := &url.URL{Path: "./" + path.Base(orig) + "/", RawQuery: r.URL.RawQuery}
		w.Header().Set("Location", target.String())
		w.WriteHeader(http.StatusMovedPermanently)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Content-Security-Policy", contentSecurityPolicy)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(statusPage)
	}
}
