// Package reslimitotel exports the accounts of a reslimit.Ledger, and the
// counters of a reslimit.Monitor, as OpenTelemetry metrics: the figures
// that contrib/prometheus (reslimitprom) exports, through observable
// instruments of go.opentelemetry.io/otel/metric, read in one callback per
// collection.
//
//	reg, err := reslimitotel.Register(ledger, reslimitotel.WithMeterProvider(provider), reslimitotel.WithMonitor(monitor))
//	if err != nil { ... }
//	defer reg.Unregister()
//
// The import path is github.com/reslimit/reslimit/contrib/otel; the
// package is named reslimitotel, so that it does not collide with package
// otel in the files that import both. RecordUsage adds a finished run's
// Usage to the attributes of the span in its context.
//
// # Metrics
//
// Every series also has the attributes of WithAttributes, if any.
//
// Per tenant (attribute tenant) and resource (attribute resource), one gauge of each kind for
// each of the account's resources, named after the resource's String
// name and in its own unit:
//
//	reslimit.tenant.usage.NAME       gauge  what the tenant used (since its last Reset)
//	reslimit.tenant.limit.NAME       gauge  the account's limit, only for a limited resource
//	reslimit.tenant.remaining.NAME   gauge  max(0, limit-usage), only for a limited resource
//
//	NAME                    unit          usage is
//	memory                  By            held now
//	total_memory            By            cumulative
//	cpu_time                s (float64)   cumulative
//	operations              {operation}   cumulative
//	function_calls          {call}        cumulative
//	evaluations             {evaluation}  cumulative (runs started)
//	concurrent_operations   {run}         held now (runs in progress)
//
// They are reslimitprom's reslimit_tenant_usage, _limit and _remaining,
// whose resource label becomes part of the name: an OpenTelemetry
// instrument has one unit. The cumulative ones are gauges there too: they
// fall back to 0 when the account is Reset (when a billing period closes).
//
// Per tenant (attribute tenant):
//
//	reslimit.tenant.refusals     counter  {request}     requests refused by the tenant's limits, with attribute resource
//	reslimit.tenant.evaluations  counter  {evaluation}  runs started (since the tenant's last Reset)
//	reslimit.tenant.running      gauge    {run}         runs in progress now
//	reslimit.tenant.exhausted    gauge                  1 when a cumulative limit has no room left, else 0
//	reslimit.tenant.run_stops    counter  {run}         runs stopped by their own per-run limits, with attribute resource; never cleared
//	reslimit.tenant.period       gauge    {period}      the open billing period (1 for the first)
//	reslimit.tenant.period_start gauge    s             its start, Unix seconds
//	reslimit.tenant.period_end   gauge    s             the ledger's next scheduled close, Unix seconds (0 without a schedule)
//
// reslimit.tenant.refusals has a series for each account resource above
// and for the rates (evaluation_rate, operation_rate), 0 until a refusal;
// an account's Reset does not clear it. reslimit.tenant.evaluations falls
// back to 0 when the account is Reset: a backend reading cumulative
// temporality (the SDK's default) sees a counter reset; with delta
// temporality the SDK would report a negative delta, so prefer cumulative.
//
// Ledger-wide:
//
//	reslimit.tenant.count     gauge  {tenant}  accounts in the ledger
//	reslimit.tenant.overflow  gauge  {tenant}  accounts not reported on their own in this collection (see WithMaxTenants)
//
// With WithMonitor (reslimit.MonitorStats):
//
//	reslimit.monitor.components       gauge    {component}
//	reslimit.monitor.warnings         counter  {event}  HighUsage events
//	reslimit.monitor.limits_exceeded  counter  {event}  LimitExceeded events
//	reslimit.monitor.recoveries       counter  {event}  Recovered events
//	reslimit.monitor.dropped_events   counter  {event}  events dropped because the channel was full
//	reslimit.monitor.polls            counter  {poll}
//
// With a fleet store, the cumulative figures are fleet-wide, as in
// reslimit.AccountStats: what the store has committed plus what this
// replica has not reported yet. Refusals and running runs are this
// replica's.
//
// # Cardinality
//
// At most WithMaxTenants tenants (default 1000) get series of their own;
// with WithTenantFilter only the tenants allowed do. The others are summed
// into one tenant named "_other" (WithOtherTenant changes the name, or
// drops them): its usage gauges, refusals, evaluations and running, with
// no limit, remaining or exhausted. reslimit.tenant.overflow counts them.
// The tenants reported on their own are the first ones seen, and stay so
// while they exist, so series do not jump between tenants from one
// collection to the next. Attribute values are valid UTF-8 whatever the
// tenant names (see Register).
//
// # Locks
//
// The callback reads the ledger with Ledger.Snapshot, which holds the
// ledger's lock only to list the accounts, then reads each account's stats
// in turn, holding that one account's mutex briefly; a run's per-operation
// hot path never waits for a collection. Its own lock is taken only by the
// callback.
//
// # Options
//
// Invalid values are errors at construction: Register returns an error
// wrapping reslimit.ErrInvalidArgument (a nil ledger, a negative
// WithMaxTenants, a nil WithMeterProvider, WithMonitor or
// WithTenantFilter, a WithOtherTenant name that is not valid UTF-8, a
// WithAttributes attribute that is invalid or named tenant or resource),
// and registers nothing. A nil Option is skipped.
package reslimitotel
