// Package reslimitprom exports the accounts of a reslimit.Ledger, and the
// counters of a reslimit.Monitor, as Prometheus metrics.
//
//	reg.MustRegister(reslimitprom.NewCollector(ledger, reslimitprom.WithMonitor(monitor)))
//
// The import path is github.com/reslimit/reslimit/contrib/prometheus; the
// package is named reslimitprom, so that it does not collide with the
// client library's package prometheus in the files that import both.
//
// # Metrics
//
// Per tenant (label tenant) and resource (label resource, the
// reslimit.Resource name: memory, total_memory, cpu_time, operations,
// function_calls, evaluations, concurrent_operations):
//
//	reslimit_tenant_usage{tenant,resource}           gauge   what the tenant used in its open billing period
//	reslimit_tenant_limit{tenant,resource}           gauge   the account's limit, only for limited resources
//	reslimit_tenant_remaining{tenant,resource}       gauge   max(0, limit-usage), only for limited resources
//	reslimit_tenant_refusals_total{tenant,resource}  counter requests refused by the tenant's limits (a rate's once it refused)
//	reslimit_run_stops_total{tenant,resource}        counter runs of the tenant stopped by their own per-run limits
//	reslimit_tenant_evaluations_total{tenant}        counter runs started in the open billing period
//	reslimit_tenant_running{tenant}                  gauge   runs in progress now
//	reslimit_tenant_exhausted{tenant}                gauge   1 when a cumulative limit has no room left
//	reslimit_tenant_period{tenant}                   gauge   the open billing period's number (1 for the first)
//	reslimit_tenant_period_start_seconds{tenant}     gauge   its start, in Unix seconds
//	reslimit_tenant_period_end_seconds{tenant}       gauge   its scheduled close, in Unix seconds (only with a schedule)
//
// Values are in base units: bytes for memory and total_memory, seconds for
// cpu_time, plain counts otherwise. Usage of memory and
// concurrent_operations is what is held now.
//
// # Period closes
//
// Which series restart at 0 when a billing period closes (Account.Reset,
// Ledger.ClosePeriod, the ledger's schedule), and which do not:
//
//   - restart: reslimit_tenant_usage (but memory and
//     concurrent_operations, held now), reslimit_tenant_remaining and
//     reslimit_tenant_evaluations_total; Prometheus reads the drop of a
//     counter as a counter reset, and reslimit_tenant_period moving on
//     tells a close from a restart of the process;
//   - never restart (cumulative over the account's life in this process):
//     reslimit_tenant_refusals_total and reslimit_run_stops_total.
//
// reslimit_run_stops_total counts the runs stopped by one of their own
// limits (reslimit.AccountStats.RunStops), as opposed to the tenant's
// refusals: it has a series for memory, cpu_time, file_size, operations,
// concurrent_operations, timeout and processes from the start (0 until a
// stop), and one for any other resource once it stopped a run.
//
// Ledger-wide:
//
//	reslimit_tenants                 gauge  accounts in the ledger
//	reslimit_tenants_overflow        gauge  accounts not exported on their own in this scrape (see WithMaxTenants)
//
// With WithMonitor:
//
//	reslimit_monitor_components              gauge
//	reslimit_monitor_warnings_total          counter  HighUsage events
//	reslimit_monitor_limits_exceeded_total   counter  LimitExceeded events
//	reslimit_monitor_recoveries_total        counter  Recovered events
//	reslimit_monitor_dropped_events_total    counter  events dropped because the channel was full
//	reslimit_monitor_polls_total             counter
//
// # Cardinality
//
// At most WithMaxTenants tenants (default 1000) get series of their own; with
// WithAllowList or WithTenantFilter only the tenants allowed do. The others
// are summed into one tenant named "_other" (WithOtherTenant changes the
// name, or drops them) and counted in reslimit_tenants_overflow. The tenants
// exported on their own are the first ones the collector saw, and stay so
// while they exist, so series do not jump between tenants from one scrape to
// the next.
//
// # Locks
//
// Collect reads the ledger with Ledger.Snapshot, which holds the ledger's
// lock only to list the accounts, then reads each account's stats in turn,
// holding that one account's mutex briefly. A run's per-operation hot path
// (TrackOperation, TrackMemory within its allowance) is lock-free
// atomics and never waits for a scrape; only its slow path (Begin, End,
// refilling its allowance from the account) takes the account's mutex. The
// collector's own lock is taken only by Collect.
//
// # Options
//
// Invalid values are errors at construction: NewCollector returns an error
// wrapping reslimit.ErrInvalidArgument (a negative WithMaxTenants, a nil
// WithMonitor or WithTenantFilter, a WithOtherTenant name that is not valid
// UTF-8), and no collector, rather than ignoring the value. A nil Option
// is skipped.
package reslimitprom

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/internal/resinfo"
)

// DefaultMaxTenants is how many tenants get series of their own by default.
const DefaultMaxTenants = 1000

// DefaultOtherTenant is the tenant label of the sum of the tenants that do
// not get series of their own.
const DefaultOtherTenant = "_other"

// Option configures NewCollector.
type Option func(*collector)

// WithMonitor also exports the counters of m (reslimit.Monitor.Stats). A
// nil m is invalid.
func WithMonitor(m *reslimit.Monitor) Option {
	return func(c *collector) {
		if m == nil {
			c.setErr(fmt.Errorf("%w: reslimitprom: WithMonitor(nil)", reslimit.ErrInvalidArgument))
			return
		}
		c.monitor = m
	}
}

// WithMaxTenants sets how many tenants get series of their own (default
// DefaultMaxTenants). 0 removes the cap: only do that when the tenants are
// few and known. A negative n is invalid.
func WithMaxTenants(n int) Option {
	return func(c *collector) {
		if n < 0 {
			c.setErr(fmt.Errorf("%w: reslimitprom: WithMaxTenants(%d): negative", reslimit.ErrInvalidArgument, n))
			return
		}
		c.max = n
	}
}

// WithAllowList lets only the named tenants get series of their own (still
// within WithMaxTenants); the others count as overflow. It replaces any
// WithTenantFilter.
func WithAllowList(tenants ...string) Option {
	allowed := make(map[string]struct{}, len(tenants))
	for _, t := range tenants {
		allowed[t] = struct{}{}
	}
	return func(c *collector) {
		c.allow = func(t string) bool {
			_, ok := allowed[t]
			return ok
		}
	}
}

// WithTenantFilter lets only the tenants for which allow returns true get
// series of their own (still within WithMaxTenants); the others count as
// overflow. allow must be fast and safe for concurrent use. It replaces
// any WithAllowList. A nil allow is invalid (without the option every
// tenant is allowed).
func WithTenantFilter(allow func(tenant string) bool) Option {
	return func(c *collector) {
		if allow == nil {
			c.setErr(fmt.Errorf("%w: reslimitprom: WithTenantFilter(nil)", reslimit.ErrInvalidArgument))
			return
		}
		c.allow = allow
	}
}

// WithOtherTenant sets the tenant label under which the tenants that do not
// get series of their own are summed (default DefaultOtherTenant). "" drops
// them; reslimit_tenants_overflow still counts them. A real tenant with that
// name counts as overflow. A name that is not valid UTF-8 is invalid (it
// could not be a label value).
func WithOtherTenant(name string) Option {
	return func(c *collector) {
		if !utf8.ValidString(name) {
			c.setErr(fmt.Errorf("%w: reslimitprom: WithOtherTenant(%q): not valid UTF-8", reslimit.ErrInvalidArgument, name))
			return
		}
		c.other = name
	}
}

// NewCollector returns a Prometheus collector of ledger's accounts (see the
// package doc for the metrics). It is safe for concurrent use. A nil ledger
// exports no tenant. Label values are valid UTF-8 whatever the tenant
// names: a name that is not gets its invalid bytes replaced by U+FFFD, and
// if that label is already another tenant's, it is summed into the other
// tenant (and counted in reslimit_tenants_overflow), so one odd name never
// makes a scrape fail.
//
// An invalid option value is reported here, as an error wrapping
// reslimit.ErrInvalidArgument, and no collector is returned.
func NewCollector(ledger *reslimit.Ledger, opts ...Option) (prom.Collector, error) {
	c := &collector{ledger: ledger, max: DefaultMaxTenants, other: DefaultOtherTenant, known: map[string]struct{}{}}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	if c.err != nil {
		return nil, c.err
	}
	return c, nil
}

type collector struct {
	ledger  *reslimit.Ledger
	monitor *reslimit.Monitor
	max     int
	allow   func(string) bool
	other   string
	err     error // the first invalid option

	mu    sync.Mutex          // taken only by Collect
	known map[string]struct{} // tenants with series of their own
}

var (
	tenantRes = []string{"tenant", "resource"}
	tenantOne = []string{"tenant"}

	descUsage = prom.NewDesc("reslimit_tenant_usage",
		"What the tenant used, by resource, in base units (bytes, seconds for cpu_time, counts); memory and concurrent_operations are held now, the rest cumulative in the open billing period: they restart at 0 at each close.",
		tenantRes, nil)
	descLimit = prom.NewDesc("reslimit_tenant_limit",
		"The tenant's account limit, by limited resource, in base units (bytes, seconds for cpu_time, counts).",
		tenantRes, nil)
	descRemaining = prom.NewDesc("reslimit_tenant_remaining",
		"What the tenant may still use before its limit, by limited resource, in base units (bytes, seconds for cpu_time, counts).",
		tenantRes, nil)
	descRefusals = prom.NewDesc("reslimit_tenant_refusals_total",
		"Requests refused by the tenant's account limits, by resource; never restarts at a period close.",
		tenantRes, nil)
	descRunStops = prom.NewDesc("reslimit_run_stops_total",
		"Runs of the tenant stopped by their own per-run limits (not the tenant's), by the resource that stopped them; never restarts at a period close.",
		tenantRes, nil)
	descEvaluations = prom.NewDesc("reslimit_tenant_evaluations_total",
		"Runs started on the tenant's account in the open billing period; restarts at 0 at each close.",
		tenantOne, nil)
	descPeriod = prom.NewDesc("reslimit_tenant_period",
		"The number of the tenant's open billing period (1 for the first); it moves on at each close.",
		tenantOne, nil)
	descPeriodStart = prom.NewDesc("reslimit_tenant_period_start_seconds",
		"When the tenant's open billing period started, in Unix seconds.",
		tenantOne, nil)
	descPeriodEnd = prom.NewDesc("reslimit_tenant_period_end_seconds",
		"When the tenant's open billing period is scheduled to close, in Unix seconds (only when the ledger closes periods on a schedule).",
		tenantOne, nil)
	descRunning = prom.NewDesc("reslimit_tenant_running",
		"Runs of the tenant in progress now.",
		tenantOne, nil)
	descExhausted = prom.NewDesc("reslimit_tenant_exhausted",
		"1 when some cumulative limit of the tenant has no room left, else 0.",
		tenantOne, nil)
	descTenants = prom.NewDesc("reslimit_tenants",
		"Tenant accounts in the ledger.", nil, nil)
	descOverflow = prom.NewDesc("reslimit_tenants_overflow",
		"Tenant accounts not exported with series of their own in this scrape (over the cap or not allowed).", nil, nil)

	descComponents = prom.NewDesc("reslimit_monitor_components",
		"Components registered with the monitor.", nil, nil)
	descWarnings = prom.NewDesc("reslimit_monitor_warnings_total",
		"High-usage events the monitor produced.", nil, nil)
	descExceeded = prom.NewDesc("reslimit_monitor_limits_exceeded_total",
		"Limit-exceeded events the monitor produced.", nil, nil)
	descRecoveries = prom.NewDesc("reslimit_monitor_recoveries_total",
		"Recovered events the monitor produced.", nil, nil)
	descDropped = prom.NewDesc("reslimit_monitor_dropped_events_total",
		"Monitor events dropped because the events channel was full.", nil, nil)
	descPolls = prom.NewDesc("reslimit_monitor_polls_total",
		"Polls the monitor completed.", nil, nil)
)

// setErr records the first invalid option.
func (c *collector) setErr(err error) {
	if c.err == nil {
		c.err = err
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prom.Desc) {
	for _, d := range []*prom.Desc{descUsage, descLimit, descRemaining, descRefusals, descRunStops, descEvaluations, descRunning, descExhausted,
		descPeriod, descPeriodStart, descPeriodEnd, descTenants, descOverflow} {
		ch <- d
	}
	if c.monitor != nil {
		for _, d := range []*prom.Desc{descComponents, descWarnings, descExceeded, descRecoveries, descDropped, descPolls} {
			ch <- d
		}
	}
}

// accountResources are the resources an account reports, in a stable order.
var accountResources = []reslimit.Resource{
	reslimit.Memory, reslimit.TotalMemory, reslimit.CPUTime, reslimit.Operations,
	reslimit.Calls, reslimit.Evaluations, reslimit.Concurrency,
}

// stopResources are the resources reslimit_run_stops_total has a series
// for from the start: those of per-run limits (reslimit.Limits, and
// reslimitexec's processes).
var stopResources = map[reslimit.Resource]bool{
	reslimit.Memory: true, reslimit.CPUTime: true, reslimit.FileSize: true, reslimit.Operations: true,
	reslimit.Concurrency: true, reslimit.Timeout: true, reslimit.Processes: true,
}

// rates are the resources of an account's rates.
var rates = [...]reslimit.Resource{reslimit.EvaluationRate, reslimit.OperationRate}

// emitRateRefusals sends the refusals of a tenant's rates (label name),
// once a rate refused.
func emitRateRefusals(ch chan<- prom.Metric, name string, refusals map[reslimit.Resource]int64) {
	for _, r := range rates {
		if n := refusals[r]; n > 0 {
			ch <- prom.MustNewConstMetric(descRefusals, prom.CounterValue, float64(n), name, r.String())
		}
	}
}

// emitRunStops sends the run stops of a tenant (label name): a series for
// each of stopResources and each other resource that stopped runs.
func emitRunStops(ch chan<- prom.Metric, name string, stops map[reslimit.Resource]int64) {
	for _, r := range reslimit.Resources() {
		if n := stops[r]; n > 0 || stopResources[r] {
			ch <- prom.MustNewConstMetric(descRunStops, prom.CounterValue, float64(n), name, r.String())
		}
	}
}

// aggregate sums the stats of the tenants that are not exported on their
// own.
type aggregate struct {
	n           int
	usage       map[reslimit.Resource]int64
	refusals    map[reslimit.Resource]int64
	stops       map[reslimit.Resource]int64
	evaluations int64
	running     int64
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prom.Metric) {
	c.collectMonitor(ch)
	if c.ledger == nil {
		ch <- prom.MustNewConstMetric(descTenants, prom.GaugeValue, 0)
		ch <- prom.MustNewConstMetric(descOverflow, prom.GaugeValue, 0)
		return
	}
	snap := c.ledger.Snapshot()
	names := make([]string, 0, len(snap))
	for name := range snap {
		names = append(names, name)
	}
	sort.Strings(names)
	own := c.choose(names)

	// Label values must be valid UTF-8, and unique: a tenant name that is
	// not gets its invalid bytes replaced by U+FFFD, unless that label is
	// taken (by a valid name, the other tenant, or an invalid name before
	// it in sort order); then it is summed into the other tenant.
	taken := make(map[string]struct{}, len(own)+1)
	if c.other != "" {
		taken[c.other] = struct{}{}
	}
	for name := range own {
		if utf8.ValidString(name) {
			taken[name] = struct{}{}
		}
	}
	other := aggregate{usage: map[reslimit.Resource]int64{}, refusals: map[reslimit.Resource]int64{}, stops: map[reslimit.Resource]int64{}}
	for _, name := range names {
		st := snap[name]
		if _, ok := own[name]; ok {
			label := name
			if !utf8.ValidString(name) {
				label = strings.ToValidUTF8(name, "\uFFFD")
				_, dup := taken[label]
				taken[label] = struct{}{}
				if dup {
					label = ""
				}
			}
			if label != "" {
				emitTenant(ch, label, &st)
				continue
			}
		}
		other.add(&st)
	}
	ch <- prom.MustNewConstMetric(descTenants, prom.GaugeValue, float64(len(names)))
	ch <- prom.MustNewConstMetric(descOverflow, prom.GaugeValue, float64(other.n))
	if other.n > 0 && c.other != "" {
		for _, r := range accountResources {
			res := r.String()
			ch <- prom.MustNewConstMetric(descUsage, prom.GaugeValue, resinfo.BaseValue(r, other.usage[r]), c.other, res)
			ch <- prom.MustNewConstMetric(descRefusals, prom.CounterValue, float64(other.refusals[r]), c.other, res)
		}
		emitRateRefusals(ch, c.other, other.refusals)
		emitRunStops(ch, c.other, other.stops)
		ch <- prom.MustNewConstMetric(descEvaluations, prom.CounterValue, float64(other.evaluations), c.other)
		ch <- prom.MustNewConstMetric(descRunning, prom.GaugeValue, float64(other.running), c.other)
	}
}

// add adds a tenant's stats to the sums.
func (a *aggregate) add(st *reslimit.AccountStats) {
	a.n++
	for _, r := range accountResources {
		a.usage[r] += resinfo.Used(st, r)
		a.refusals[r] += st.Refusals[r]
	}
	for r, n := range st.RunStops {
		a.stops[r] += n
	}
	for _, r := range rates {
		a.refusals[r] += st.Refusals[r]
	}
	a.evaluations += st.Evaluations
	a.running += st.Running
}

// choose returns the tenants (of the sorted names) that get series of their
// own: the ones already known that still exist and are allowed, then new
// allowed ones in name order, up to the cap.
func (c *collector) choose(names []string) map[string]struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	present := make(map[string]struct{}, len(names))
	for _, n := range names {
		present[n] = struct{}{}
	}
	for k := range c.known {
		if _, ok := present[k]; !ok || !c.allowed(k) {
			delete(c.known, k)
		}
	}
	for _, n := range names {
		if c.max > 0 && len(c.known) >= c.max {
			break
		}
		if c.allowed(n) {
			c.known[n] = struct{}{}
		}
	}
	own := make(map[string]struct{}, len(c.known))
	for k := range c.known {
		own[k] = struct{}{}
	}
	return own
}

func (c *collector) allowed(tenant string) bool {
	if c.other != "" && tenant == c.other {
		return false
	}
	return c.allow == nil || c.allow(tenant)
}

func emitTenant(ch chan<- prom.Metric, name string, st *reslimit.AccountStats) {
	for _, r := range accountResources {
		res := r.String()
		ch <- prom.MustNewConstMetric(descUsage, prom.GaugeValue, resinfo.BaseValue(r, resinfo.Used(st, r)), name, res)
		if ls, ok := st.LimitStatus[r]; ok {
			ch <- prom.MustNewConstMetric(descLimit, prom.GaugeValue, resinfo.BaseValue(r, ls.Limit), name, res)
			ch <- prom.MustNewConstMetric(descRemaining, prom.GaugeValue, resinfo.BaseValue(r, ls.Remaining), name, res)
		}
		ch <- prom.MustNewConstMetric(descRefusals, prom.CounterValue, float64(st.Refusals[r]), name, res)
	}
	emitRateRefusals(ch, name, st.Refusals)
	emitRunStops(ch, name, st.RunStops)
	ch <- prom.MustNewConstMetric(descEvaluations, prom.CounterValue, float64(st.Evaluations), name)
	ch <- prom.MustNewConstMetric(descRunning, prom.GaugeValue, float64(st.Running), name)
	exhausted := 0.0
	if st.Exhausted {
		exhausted = 1
	}
	ch <- prom.MustNewConstMetric(descExhausted, prom.GaugeValue, exhausted, name)
	ch <- prom.MustNewConstMetric(descPeriod, prom.GaugeValue, float64(st.Period), name)
	ch <- prom.MustNewConstMetric(descPeriodStart, prom.GaugeValue, unixSeconds(st.PeriodStart), name)
	if !st.PeriodEnd.IsZero() {
		ch <- prom.MustNewConstMetric(descPeriodEnd, prom.GaugeValue, unixSeconds(st.PeriodEnd), name)
	}
}

// unixSeconds is t in Unix seconds, with a fraction.
func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func (c *collector) collectMonitor(ch chan<- prom.Metric) {
	if c.monitor == nil {
		return
	}
	st := c.monitor.Stats()
	ch <- prom.MustNewConstMetric(descComponents, prom.GaugeValue, float64(st.Components))
	ch <- prom.MustNewConstMetric(descWarnings, prom.CounterValue, float64(st.Warnings))
	ch <- prom.MustNewConstMetric(descExceeded, prom.CounterValue, float64(st.LimitsExceeded))
	ch <- prom.MustNewConstMetric(descRecoveries, prom.CounterValue, float64(st.Recoveries))
	ch <- prom.MustNewConstMetric(descDropped, prom.CounterValue, float64(st.DroppedEvents))
	ch <- prom.MustNewConstMetric(descPolls, prom.CounterValue, float64(st.Polls))
}
