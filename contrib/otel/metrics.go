package reslimitotel

import (
	"time"

	"github.com/reslimit/reslimit"
)

// The tables below are every metric Register exports. Adding a metric is
// adding a row: the instruments, the callback and the sum of the tenants
// that do not get series of their own all read these tables.

// kind is how an instrument's values read: a gauge is a value now, a
// counter only grows (but for an account's Reset, see the package doc).
type kind uint8

const (
	gauge kind = iota
	counter
)

// usageResources are the resources an account reports, each with three
// gauges of its own, named after the resource (String) and in its unit:
// reslimit.tenant.usage.NAME, reslimit.tenant.limit.NAME and
// reslimit.tenant.remaining.NAME. A resource in "s" (reslimit's
// nanoseconds) has float64 seconds; the others int64. held says that its
// usage is what is held now rather than cumulative; used reads it.
var usageResources = []struct {
	res  reslimit.Resource
	unit string
	held bool
	used func(*reslimit.AccountStats) int64
}{
	{reslimit.Memory, "By", true, func(s *reslimit.AccountStats) int64 { return s.MemoryBytes }},
	{reslimit.TotalMemory, "By", false, func(s *reslimit.AccountStats) int64 { return s.TotalMemoryBytes }},
	{reslimit.CPUTime, "s", false, func(s *reslimit.AccountStats) int64 { return int64(s.CPUTime) }},
	{reslimit.Operations, "{operation}", false, func(s *reslimit.AccountStats) int64 { return s.Operations }},
	{reslimit.Calls, "{call}", false, func(s *reslimit.AccountStats) int64 { return s.Calls }},
	{reslimit.Evaluations, "{evaluation}", false, func(s *reslimit.AccountStats) int64 { return s.Evaluations }},
	{reslimit.Concurrency, "{run}", true, func(s *reslimit.AccountStats) int64 { return s.Running }},
}

// accountAndRates are the account's resources (usageResources) and its
// rates: the resources its limits refuse requests for.
var accountAndRates = func() []reslimit.Resource {
	out := make([]reslimit.Resource, 0, len(usageResources)+2)
	for _, u := range usageResources {
		out = append(out, u.res)
	}
	return append(out, reslimit.EvaluationRate, reslimit.OperationRate)
}()

// byResource are counters of an account with one series per tenant and
// resource (attribute resource): one for each resource of the row's
// resources, 0 for one that the map has no entry for. They are summed
// into the other tenant.
var byResource = []struct {
	name, unit, desc string
	resources        []reslimit.Resource
	read             func(*reslimit.AccountStats) map[reslimit.Resource]int64
}{
	{"reslimit.tenant.refusals", "{request}",
		"Requests refused by the tenant's account limits, by resource; an account's Reset does not clear it.",
		accountAndRates, func(s *reslimit.AccountStats) map[reslimit.Resource]int64 { return s.Refusals }},
	{"reslimit.tenant.run_stops", "{run}",
		"Runs of the tenant stopped by their own per-run limits, by resource; never cleared (neither by a Reset nor a period close).",
		runLimits, func(s *reslimit.AccountStats) map[reslimit.Resource]int64 { return s.RunStops }},
}

// runLimits are the resources of per-run limits (reslimit.Limits, and
// reslimitexec's processes): those that stop runs.
var runLimits = []reslimit.Resource{
	reslimit.Memory, reslimit.CPUTime, reslimit.FileSize, reslimit.Operations, reslimit.Calls,
	reslimit.Concurrency, reslimit.Timeout, reslimit.Processes,
}

// perTenant are figures of an account with one series per tenant. The
// summed ones are also reported for the other tenant, as their sum.
var perTenant = []struct {
	name, unit, desc string
	kind             kind
	summed           bool
	read             func(*reslimit.AccountStats) int64
}{
	{"reslimit.tenant.evaluations", "{evaluation}",
		"Runs started on the tenant's account since its last reset.",
		counter, true, func(s *reslimit.AccountStats) int64 { return s.Evaluations }},
	{"reslimit.tenant.running", "{run}",
		"Runs of the tenant in progress now.",
		gauge, true, func(s *reslimit.AccountStats) int64 { return s.Running }},
	{"reslimit.tenant.exhausted", "",
		"1 when some cumulative limit of the tenant has no room left, else 0.",
		gauge, false, func(s *reslimit.AccountStats) int64 { return boolInt(s.Exhausted) }},
	{"reslimit.tenant.period", "{period}",
		"The tenant's open billing period (1 for the first); usage gauges restart when it moves on.",
		gauge, false, func(s *reslimit.AccountStats) int64 { return int64(s.Period) }},
	{"reslimit.tenant.period_start", "s",
		"When the tenant's open billing period began, in Unix seconds.",
		gauge, false, func(s *reslimit.AccountStats) int64 { return s.PeriodStart.Unix() }},
	{"reslimit.tenant.period_end", "s",
		"The ledger's next scheduled close of the tenant's period, in Unix seconds (0 without a schedule).",
		gauge, false, func(s *reslimit.AccountStats) int64 { return unixOrZero(s.PeriodEnd) }},
}

// unixOrZero is t in Unix seconds, or 0 for the zero time.
func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// perMonitor are the figures of a Monitor (WithMonitor).
var perMonitor = []struct {
	name, unit, desc string
	kind             kind
	read             func(*reslimit.MonitorStats) int64
}{
	{"reslimit.monitor.components", "{component}", "Components registered with the monitor.",
		gauge, func(s *reslimit.MonitorStats) int64 { return int64(s.Components) }},
	{"reslimit.monitor.warnings", "{event}", "High-usage events the monitor produced.",
		counter, func(s *reslimit.MonitorStats) int64 { return s.Warnings }},
	{"reslimit.monitor.limits_exceeded", "{event}", "Limit-exceeded events the monitor produced.",
		counter, func(s *reslimit.MonitorStats) int64 { return s.LimitsExceeded }},
	{"reslimit.monitor.recoveries", "{event}", "Recovered events the monitor produced.",
		counter, func(s *reslimit.MonitorStats) int64 { return s.Recoveries }},
	{"reslimit.monitor.dropped_events", "{event}", "Monitor events dropped because the events channel was full.",
		counter, func(s *reslimit.MonitorStats) int64 { return s.DroppedEvents }},
	{"reslimit.monitor.polls", "{poll}", "Polls the monitor completed.",
		counter, func(s *reslimit.MonitorStats) int64 { return s.Polls }},
}

// The ledger-wide gauges.
const (
	nameTenants  = "reslimit.tenant.count"
	nameOverflow = "reslimit.tenant.overflow"
)

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// usageDesc, limitDesc and remainingDesc describe the gauges of resource
// r.
func usageDesc(r reslimit.Resource, held bool) string {
	when := "cumulative since the account's last reset"
	if held {
		when = "held now"
	}
	return "What the tenant used of " + r.String() + ", " + when + "."
}

func limitDesc(r reslimit.Resource) string {
	return "The tenant's account limit of " + r.String() + ", only while it has one."
}

func remainingDesc(r reslimit.Resource) string {
	return "What the tenant may still use of " + r.String() + " before its limit, only while it has one."
}
