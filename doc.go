// Package reslimit bounds what a piece of work may consume — memory, CPU
// time, file sizes, operation counts, concurrency, wall time — and
// attributes what it did consume to a tenant, cumulatively, for quotas and
// billing.
//
// # Runs and trackers
//
// A [Tracker] is one run's budget: lock-free atomic counters checked
// against [Limits]. Wrap untrusted work with [Run] or [Limit]; inside it,
// [FromContext] returns the run's tracker:
//
//	tool := reslimit.Limit(search, reslimit.Strict())
//	out, err := tool(ctx, query)
//
//	func search(ctx context.Context, q string) ([]Hit, error) {
//		tr := reslimit.FromContext(ctx)
//		for ... {
//			if err := tr.TrackOperation(); err != nil { // counts an operation, sees timeout and CPU stops
//				return nil, err
//			}
//		}
//	}
//
// A run whose CPU time nothing measures gets its tracker on the first
// FromContext, so wrapping a function that never asks for it costs little
// more than its policy checks.
//
// Memory and concurrency slots are held with a [Guard] and given back with
// Release, typically deferred.
//
// # Semantics
//
// A limit of 0 means no limit; a negative limit is invalid
// ([ErrInvalidLimits]). Usage equal to a limit is allowed; a request that
// would take usage above it is refused with a [*LimitError] that matches
// [ErrLimitExceeded], and changes no counter. Usage is counted whether or
// not a limit is set. Counters never go negative: releasing more than is
// held is an error.
//
// CPU time is real CPU time: on Linux, Run runs the work locked to its OS
// thread and reads that thread's CPU clock, so a run that sleeps uses almost
// none. It does so where something needs it: when MaxCPUTime is set, when
// the run is charged to an Account, or with [WithCPUTime]. A watchdog samples the clock of each running
// call and cancels its context with a CPUTime *LimitError as the cause when
// MaxCPUTime is used up. On other platforms, without thread clocks, wall
// time stands in for CPU time (see [Usage]).
//
// A run started with the context of another run is its child: it draws
// from its parent's limits and is billed to its parent's tenant. A stopped
// run refuses every further charge; a panic in a run is re-raised after
// its Go helpers have returned.
//
// # Options
//
// Every package of reslimit follows one rule for its options (Option,
// AccountOption, LedgerOption and those of the sub-packages): an invalid
// value is an error at construction, wrapping [ErrInvalidArgument] or
// [ErrInvalidLimits], never clamped or ignored; an option that configures
// the fleet ([WithReplica], [WithSyncInterval], [WithLeaseWait],
// [WithFailurePolicy], [WithLogger]) is an error without [WithStore]. A
// zero field of a config struct ([MonitorConfig]) takes the default its
// doc names.
//
// # Tenants
//
// An [Account] holds one tenant's cumulative totals, history and limit
// status over many runs and enforces [AccountLimits] across all of them;
// a [Ledger] keeps an account per tenant ([Ledger.Account] never returns
// nil: a tenant that cannot be opened gets an account that refuses every
// run, so work never runs unbilled). Charge a run to a tenant with
// [WithAccount], [ContextWithAccount] or [Account.Begin]. With
// [WithStore], replicas share their tenants' cumulative quotas.
//
// # Monitoring
//
// A [Monitor] polls registered trackers and accounts (or every tenant of a
// ledger, [Monitor.RegisterLedger]) and sends threshold events on a
// channel: HighUsage and Recovered for usage crossings, LimitExceeded when
// something was refused.
//
// # Code that does not cooperate
//
// Package reslimitexec makes a run's CPU time, memory, file size and
// timeout bind a child process; contrib/wazero and contrib/starlark make
// them bind WebAssembly guests and Starlark scripts.
package reslimit
