package reslimit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Reading is one resource's state as a Source reports it to a Monitor: the
// usage and the limit (0 = none) in the resource's unit, and how many
// requests for it have been refused so far (a cumulative count).
type Reading struct {
	Resource Resource
	Used     int64
	Limit    int64
	Refusals int64
	// StoreLost is, for an account with a fleet Store, how much of the
	// resource the store lost of this replica's reports and was reported
	// again, cumulatively (0 otherwise). A rise sends StoreReset.
	StoreLost int64
	// RunStops is, for an account, how many of its runs were stopped by
	// their own per-run limit on the resource, cumulatively
	// (AccountStats.RunStops; 0 for a tracker). A rise sends RunStopped.
	RunStops int64
}

// Source is something a Monitor can poll: *Tracker and *Account implement
// it. AppendReadings appends one Reading per resource and returns the
// extended slice; it must be safe for concurrent use, must not block for
// long, and should not allocate when dst has room.
type Source interface {
	AppendReadings(dst []Reading) []Reading
}

// Monitor defaults: a zero field of MonitorConfig takes these.
const (
	// defaultWarningThreshold is the fraction of a limit at which a
	// Monitor sends HighUsage.
	defaultWarningThreshold = 0.8
	// defaultCheckInterval is how often a started Monitor polls.
	defaultCheckInterval = time.Second
	// defaultMonitorHistory is how many events a Monitor's History keeps.
	defaultMonitorHistory = 1000
	// defaultEventBuffer is the capacity of a Monitor's Events channel.
	defaultEventBuffer = 256
)

// monitorHysteresis is the margin, as a fraction of the limit, that keeps a
// usage hovering at a threshold from sending an event on every poll.
//
// After HighUsage, Recovered is sent only once the usage falls below
// WarningThreshold − h of the limit, where h is monitorHysteresis or half
// the WarningThreshold, whichever is smaller.
const monitorHysteresis = 0.05

// processComponent is the name under which a Monitor with
// MonitorConfig.WatchProcess registers its process memory backstop.
const processComponent = "process"

// errMonitorStarted is returned by Monitor.Start when the monitor was
// already started.
var errMonitorStarted = errors.New("reslimit: monitor already started")

// MonitorConfig configures NewMonitor. A zero field takes the default
// named in its doc. MonitorConfig is a plain value.
type MonitorConfig struct {
	// WarningThreshold is the fraction of a limit, in (0, 1], at which
	// usage counts as high and HighUsage is sent. Default 0.8.
	WarningThreshold float64
	// CheckInterval is the time between two polls of a started Monitor.
	// Default 1s; negative is invalid.
	CheckInterval time.Duration
	// HistorySize is how many of the latest events History keeps.
	// Default 1000; negative is invalid.
	HistorySize int
	// EventBuffer is the capacity of the Events channel. When it is full,
	// events are dropped and counted (MonitorStats.DroppedEvents). Default
	// 256; negative is invalid.
	EventBuffer int
	// Logger, if not nil, logs every event as it is sent: HighUsage and
	// RunStopped at Warn level, LimitExceeded and StoreReset at Error,
	// Recovered at Info.
	Logger *slog.Logger
	// WatchProcess registers a built-in component named "process" (its
	// name in MonitorStats.PerComponent and Event.Component) that reads
	// the Go runtime's memory from runtime/metrics — the memory the
	// runtime's memory limit governs: all memory mapped by the Go runtime
	// (heap included) minus heap memory returned to the OS — against
	// ProcessMemoryLimit, or, when that is 0,
	// against the limit set with debug.SetMemoryLimit or GOMEMLIMIT. With
	// neither it reports usage without a limit, and so sends no events.
	// It never stops the world (no runtime.ReadMemStats).
	WatchProcess bool
	// ProcessMemoryLimit is the process memory limit in bytes for
	// WatchProcess (0: use the runtime's memory limit). Negative is
	// invalid.
	ProcessMemoryLimit int64
}

// EventKind says what a Monitor event reports. The zero value is invalid.
type EventKind uint8

// The kinds of Monitor events.
const (
	// HighUsage: a resource's usage crossed WarningThreshold of its limit
	// upward (a usage at its limit, which is allowed, is HighUsage with
	// Ratio 1).
	HighUsage EventKind = iota + 1
	// LimitExceeded: requests for the resource were refused since the
	// previous poll: something did not run, or stopped, for want of it.
	LimitExceeded
	// Recovered: after HighUsage, the usage fell back below the threshold
	// (less a hysteresis of 5% of the limit).
	Recovered
	// StoreReset: a fleet store lost reports of this replica for the
	// resource (a Redis restarted without its data, say) and the replica
	// reported them again; Used is how much was lost since the previous
	// poll. The account's FleetStats and the ledger's logger say so too.
	StoreReset
	// RunStopped: runs of an account were stopped by their own per-run
	// limit on the resource since the previous poll (AccountStats.RunStops),
	// with their count in Event.RunStops. Like LimitExceeded, it fires on
	// the first poll of a streak.
	RunStopped
)

var eventKindNames = [...]string{
	HighUsage:     "high_usage",
	LimitExceeded: "limit_exceeded",
	Recovered:     "recovered",
	StoreReset:    "store_reset",
	RunStopped:    "run_stopped",
}

// valid reports whether k is one of the defined kinds.
func (k EventKind) valid() bool { return k >= HighUsage && k <= RunStopped }

// String returns the kind's stable snake_case name ("high_usage",
// "limit_exceeded", "recovered", "store_reset", "run_stopped"), or
// "event_kind(N)" for an invalid value.
func (k EventKind) String() string {
	if k.valid() {
		return eventKindNames[k]
	}
	return "event_kind(" + strconv.Itoa(int(k)) + ")"
}

// MarshalText implements encoding.TextMarshaler with the String name. It
// fails for an invalid kind.
func (k EventKind) MarshalText() ([]byte, error) {
	if !k.valid() {
		return nil, errors.New("reslimit: cannot marshal invalid " + k.String())
	}
	return []byte(eventKindNames[k]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler, accepting the names
// that String returns.
func (k *EventKind) UnmarshalText(b []byte) error {
	for v := HighUsage; v <= RunStopped; v++ {
		if eventKindNames[v] == string(b) {
			*k = v
			return nil
		}
	}
	return errors.New("reslimit: unknown event kind " + strconv.Quote(string(b)))
}

// Event is one threshold crossing or refusal seen by a Monitor. Used and
// Limit are in the resource's unit (bytes, counts, or nanoseconds for
// CPUTime and Timeout); Limit is 0 when the resource has no limit. Event
// is a plain value; it implements slog.LogValuer.
type Event struct {
	// Time is when the poll that saw the event started.
	Time time.Time
	// Component is the name the source was registered under.
	Component string
	// Resource is the resource concerned.
	Resource Resource
	// Kind is what happened.
	Kind EventKind
	// Used is the usage read by the poll.
	Used int64
	// Limit is the limit read by the poll (0: none).
	Limit int64
	// Ratio is Used/Limit, or 0 when there is no limit.
	Ratio float64
	// Refusals is the number of requests for the resource refused since
	// the previous poll (only for LimitExceeded; 0 when the event is a
	// usage crossing alone).
	Refusals int64
	// RunStops is, for RunStopped, the number of runs stopped by their
	// own limit on the resource since the previous poll (0 otherwise).
	// Used and Limit are then the account's reading of the resource (0
	// for a resource only runs limit, such as timeout).
	RunStops int64
}

// LogValue implements slog.LogValuer: the event as a group of its fields,
// with CPUTime and Timeout values as durations.
func (e Event) LogValue() slog.Value {
	attrs := make([]slog.Attr, 0, 8)
	attrs = append(attrs,
		slog.Time("time", e.Time),
		slog.String("component", e.Component),
		slog.String("resource", e.Resource.String()),
		slog.String("kind", e.Kind.String()),
	)
	attrs = e.appendValueAttrs(attrs)
	return slog.GroupValue(attrs...)
}

func (e *Event) appendValueAttrs(attrs []slog.Attr) []slog.Attr {
	if e.Resource.isTime() {
		attrs = append(attrs, slog.Duration("used", time.Duration(e.Used)), slog.Duration("limit", time.Duration(e.Limit)))
	} else {
		attrs = append(attrs, slog.Int64("used", e.Used), slog.Int64("limit", e.Limit))
	}
	attrs = append(attrs, slog.Float64("ratio", e.Ratio))
	if e.Refusals > 0 {
		attrs = append(attrs, slog.Int64("refusals", e.Refusals))
	}
	if e.RunStops > 0 {
		attrs = append(attrs, slog.Int64("run_stops", e.RunStops))
	}
	return attrs
}

// MonitorStats is a snapshot of a Monitor. Memory in bytes. The event
// counters count every event the monitor produced since NewMonitor,
// delivered or dropped; they are not derived from, nor capped by, History.
type MonitorStats struct {
	// Components is the number of registered components, including the
	// process backstop if any.
	Components int
	// TotalMemoryBytes is the sum over the components (except the process
	// backstop) of the memory held now (their Memory readings). A run
	// registered alongside its account is counted in both.
	TotalMemoryBytes int64
	// TotalOperations is the sum of the components' Operations readings
	// (except the process backstop).
	TotalOperations int64
	// ConcurrentOperations is the sum of the components' Concurrency
	// readings: slots or runs in progress now.
	ConcurrentOperations int64
	// Warnings counts HighUsage events.
	Warnings int64
	// LimitsExceeded counts LimitExceeded events.
	LimitsExceeded int64
	// Recoveries counts Recovered events.
	Recoveries int64
	// StoreResets counts StoreReset events.
	StoreResets int64
	// DroppedEvents counts the events not delivered because the Events
	// channel was full.
	DroppedEvents int64
	// Polls counts completed polls.
	Polls int64
	// PerComponent has one entry per registered component, by name.
	PerComponent map[string]ComponentStats
}

// ComponentStats is one component's part of MonitorStats. Memory in bytes.
type ComponentStats struct {
	// MemoryBytes is the memory held now (its Memory reading).
	MemoryBytes int64
	// Operations is its Operations reading.
	Operations int64
	// Concurrent is its Concurrency reading.
	Concurrent int64
	// Readings is everything the source reported, read by Stats.
	Readings []Reading
	// Warnings and LimitsExceeded count the HighUsage and LimitExceeded
	// events of the component since it was (last) registered.
	Warnings       int64
	LimitsExceeded int64
}

// resFlags is the edge state of one resource of one component beside its
// refusals count. It is accessed only by the poll in progress (under
// Monitor.pollMu).
type resFlags uint8

const (
	resHigh     resFlags = 1 << iota // at or above the warning threshold (HighUsage sent)
	resRefusing                      // the previous poll found new refusals
	resStopping                      // the previous poll found new run stops
)

// component is one registered source and its edge state. It is allocated
// at Register and dropped at Unregister (or when replaced).
type component struct {
	// What a poll reads comes first, within the component's first 128
	// bytes (two or three cache lines; with 16 bytes of state a resource
	// they were four): a poll of many sources waits mostly for memory.
	src      Source
	ledger   *Ledger // see below
	removed  atomic.Bool
	builtin  bool
	flags    [numResources]resFlags
	refusals [numResources]int64 // the refusals last read, per resource

	name  string
	lost  [numResources]int64 // the StoreLost last read, per resource
	stops [numResources]int64 // the RunStops last read, per resource

	warnings atomic.Int64
	exceeded atomic.Int64

	// A ledger's component stands for every tenant of the ledger: one
	// sub-component per account, named name+tenant, made when a poll first
	// sees the account and dropped when the ledger no longer holds it.
	tenMu   sync.Mutex // guards tenants (polls write, Stats reads)
	tenants map[*Account]*component
	accts   []*Account // reused by polls: the ledger's accounts
	gen     uint64     // polls of a ledger; for a tenant, the last poll that saw it
}

// registry is an immutable snapshot of the registered components, in
// registration order. Writers (under Monitor.regMu) publish a new one;
// polls iterate the snapshot they loaded without any lock.
type registry struct {
	comps []*component
}

// Monitor polls registered Sources (trackers of long-lived components,
// tenants' accounts) and reports what it sees as Events: on the Events
// channel, in History, in the MonitorStats counters and, if configured,
// through a slog.Logger. Nothing is pushed from the tracked code's hot
// path: each poll reads the sources' counters.
//
// For each reading (one resource of one component) a poll sends:
//
//   - HighUsage when Used/Limit reaches WarningThreshold from below (a
//     usage at its limit is allowed: it is HighUsage, at Ratio 1);
//   - Recovered when, after HighUsage, Used/Limit falls below
//     WarningThreshold less a hysteresis of 5% of the limit;
//   - LimitExceeded, with Event.Refusals set, when the source refused
//     requests for the resource since the previous poll, and the poll
//     before found none: one event per streak of refusals, carrying the
//     count of the first poll, so that a tenant hammering an exhausted
//     quota does not send an event every tick. After a poll without new
//     refusals, the next refusal fires again. Only a refusal sends
//     LimitExceeded: a resource used up to its limit without a refusal
//     (8 of 8 concurrent calls) is HighUsage.
//   - RunStopped, with Event.RunStops set, likewise once per streak of
//     polls that find new runs of an account stopped by their own limit on
//     the resource (Reading.RunStops).
//
// Usage events are edge-triggered: each fires once per crossing, not on
// every poll, and a hysteresis of 5% of the limit keeps a usage hovering at a threshold
// from flapping. A resource whose Limit is 0 never sends usage events
// (refusals still send LimitExceeded); a limit that is removed forgets the
// resource's level without an event.
//
// A Monitor is safe for concurrent use. Register and Unregister may run
// while a poll is in progress: the registry is copy-on-write, so they
// never wait for the poll, nor the poll for them. Polls are serialised.
type Monitor struct {
	once  sync.Once   // configures the monitor: in NewMonitor, or on first use of a zero Monitor
	ready atomic.Bool // configured

	threshold    float64
	recoverBelow float64
	restBelow    float64 // threshold less a rounding margin (see atRest)
	interval     time.Duration
	logger       *slog.Logger

	events chan Event

	regMu sync.Mutex // serialises registry writers
	reg   atomic.Pointer[registry]

	pollMu sync.Mutex // serialises polls; guards buf and closing events
	buf    []Reading
	closed bool // events is closed; guarded by pollMu
	done   atomic.Bool

	histMu   sync.Mutex
	hist     []Event
	histCap  int
	histNext int

	lifeMu   sync.Mutex
	started  bool
	stopping bool
	quit     chan struct{}
	exited   chan struct{} // closed when the polling goroutine has exited

	warnings    atomic.Int64
	exceeded    atomic.Int64
	recovered   atomic.Int64
	storeResets atomic.Int64
	dropped     atomic.Int64
	polls       atomic.Int64
}

// NewMonitor returns a monitor configured by cfg, with no component
// registered (except the process backstop when cfg.WatchProcess is set).
// It does not poll until Start is called; Poll checks now. It returns an error wrapping
// ErrInvalidArgument for a WarningThreshold outside (0, 1], a negative
// CheckInterval or EventBuffer, and one wrapping ErrInvalidLimits for a
// negative ProcessMemoryLimit.
func NewMonitor(cfg MonitorConfig) (*Monitor, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m := &Monitor{}
	m.once.Do(func() { m.setup(cfg) })
	return m, nil
}

func (cfg *MonitorConfig) validate() error {
	th := cfg.WarningThreshold
	if math.IsNaN(th) || th < 0 || th > 1 {
		return fmt.Errorf("%w: WarningThreshold %v is not in (0, 1]", ErrInvalidArgument, cfg.WarningThreshold)
	}
	if cfg.CheckInterval < 0 {
		return fmt.Errorf("%w: negative CheckInterval %v", ErrInvalidArgument, cfg.CheckInterval)
	}
	if cfg.EventBuffer < 0 {
		return fmt.Errorf("%w: negative EventBuffer %d", ErrInvalidArgument, cfg.EventBuffer)
	}
	if cfg.HistorySize < 0 {
		return fmt.Errorf("%w: negative HistorySize %d", ErrInvalidArgument, cfg.HistorySize)
	}
	if cfg.ProcessMemoryLimit < 0 {
		return fmt.Errorf("%w: negative ProcessMemoryLimit %d", ErrInvalidLimits, cfg.ProcessMemoryLimit)
	}
	return nil
}

// setup configures m from a valid cfg, filling in the defaults.
func (m *Monitor) setup(cfg MonitorConfig) {
	th := cmp.Or(cfg.WarningThreshold, defaultWarningThreshold)
	m.threshold = th
	m.recoverBelow = th - min(monitorHysteresis, th/2)
	m.restBelow = th * (1 - 0x1p-40)
	m.interval = cmp.Or(cfg.CheckInterval, defaultCheckInterval)
	m.logger = cfg.Logger
	m.events = make(chan Event, cmp.Or(cfg.EventBuffer, defaultEventBuffer))
	m.histCap = cmp.Or(cfg.HistorySize, defaultMonitorHistory)
	m.quit = make(chan struct{})
	m.reg.Store(&registry{})
	if cfg.WatchProcess {
		c := &component{name: processComponent, src: newProcessSource(cfg.ProcessMemoryLimit), builtin: true}
		m.reg.Store(&registry{comps: []*component{c}})
	}
	m.ready.Store(true)
}

// init makes a zero Monitor a monitor with the default configuration, as
// NewMonitor(MonitorConfig{}) returns.
func (m *Monitor) init() {
	if !m.ready.Load() {
		m.once.Do(func() { m.setup(MonitorConfig{}) })
	}
}

// Register adds s to the monitored components under name, or replaces the
// source registered under that name (keeping its place in the polling
// order) and forgets the old one's edge state. Refusals that s counted
// before Register do not fire events; usage already above a threshold
// fires on the next poll. It returns an error wrapping ErrInvalidArgument
// for an empty name or a nil s (including a nil *Tracker or *Account), and
// ErrClosed after Stop. Safe for concurrent use, also during a poll.
func (m *Monitor) Register(name string, s Source) error {
	m.init()
	if name == "" {
		return fmt.Errorf("%w: Monitor.Register with an empty name", ErrInvalidArgument)
	}
	if isNilSource(s) {
		return fmt.Errorf("%w: Monitor.Register(%q) with a nil source", ErrInvalidArgument, name)
	}
	if m.done.Load() {
		return ErrClosed
	}
	m.add(newComponent(name, s))
	return nil
}

// RegisterLedger makes the monitor watch every tenant of l, present and
// future: each poll reads the accounts l holds at that moment, each as a
// component named prefix+tenant (so prefix "tenant/" names them
// "tenant/acme", ...), with its own edge state; a tenant removed from l is
// forgotten. Refusals an account counted before the monitor first saw it
// do not fire events. Registering a ledger (or a source) under a name in
// use replaces it; Unregister(prefix) stops watching. It returns an error
// wrapping ErrInvalidArgument for a nil l, and ErrClosed after Stop. Safe
// for concurrent use, also during a poll.
func (m *Monitor) RegisterLedger(prefix string, l *Ledger) error {
	m.init()
	if l == nil {
		return fmt.Errorf("%w: Monitor.RegisterLedger(%q) with a nil ledger", ErrInvalidArgument, prefix)
	}
	if m.done.Load() {
		return ErrClosed
	}
	m.add(&component{name: prefix, ledger: l, tenants: make(map[*Account]*component)})
	return nil
}

// newComponent returns a component for s under name, whose refusal
// baselines are what s has counted so far.
func newComponent(name string, s Source) *component {
	c := &component{name: name, src: s}
	for _, r := range s.AppendReadings(nil) {
		if r.Resource.valid() {
			c.refusals[r.Resource] = r.Refusals
			c.lost[r.Resource] = r.StoreLost
			c.stops[r.Resource] = r.RunStops
		}
	}
	return c
}

// add publishes c, replacing the component of the same name if any.
func (m *Monitor) add(c *component) {
	m.regMu.Lock()
	defer m.regMu.Unlock()
	old := m.reg.Load().comps
	for i, o := range old {
		if o.name == c.name {
			comps := make([]*component, len(old))
			copy(comps, old)
			comps[i] = c
			o.removed.Store(true)
			m.reg.Store(&registry{comps: comps})
			return
		}
	}
	// Appending in place is safe: snapshots already published never read
	// past their own length, and a removal always copies.
	m.reg.Store(&registry{comps: append(old, c)})
}

// pollLedger polls every account of a ledger's component. Called with
// pollMu held.
func (m *Monitor) pollLedger(c *component, now time.Time) {
	c.accts = c.ledger.appendAccounts(c.accts[:0])
	c.tenMu.Lock()
	defer c.tenMu.Unlock()
	c.gen++
	for _, a := range c.accts {
		sub := c.tenants[a]
		if sub == nil {
			if c.gen == 1 {
				// Watching starts: what accounts refused before is old.
				sub = newComponent(c.name+a.Name(), a)
			} else {
				sub = &component{name: c.name + a.Name(), src: a} // new: every refusal counts
			}
			c.tenants[a] = sub
		}
		sub.gen = c.gen
		m.buf = a.AppendReadings(m.buf[:0])
		for i := range m.buf {
			m.check(sub, &m.buf[i], now)
		}
	}
	for a, sub := range c.tenants {
		if sub.gen != c.gen {
			delete(c.tenants, a) // no longer in the ledger
		}
	}
	clear(c.accts) // hold no account beyond the poll
}

func isNilSource(s Source) bool {
	switch v := s.(type) {
	case nil:
		return true
	case *Tracker:
		return v == nil
	case *Account:
		return v == nil
	}
	return false
}

// Unregister removes the component registered under name, if any, and
// forgets its edge state; a poll in progress skips it from now on. Safe
// for concurrent use, also during a poll.
func (m *Monitor) Unregister(name string) {
	m.init()
	m.regMu.Lock()
	defer m.regMu.Unlock()
	old := m.reg.Load().comps
	for i, o := range old {
		if o.name == name {
			comps := make([]*component, 0, len(old)-1)
			comps = append(comps, old[:i]...)
			comps = append(comps, old[i+1:]...)
			o.removed.Store(true)
			m.reg.Store(&registry{comps: comps})
			return
		}
	}
}

// Start starts the goroutine that polls every CheckInterval (the first
// poll happens at once) until Stop is called or ctx ends; either way the
// goroutine then closes the Events channel. It returns an error when
// called a second time (a programming error), ErrClosed after Stop, and an error wrapping
// ErrInvalidArgument for a nil ctx. Safe for concurrent use.
func (m *Monitor) Start(ctx context.Context) error {
	if ctx == nil {
		return fmt.Errorf("%w: Monitor.Start with a nil context", ErrInvalidArgument)
	}
	m.init()
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if m.stopping || m.done.Load() {
		return ErrClosed
	}
	if m.started {
		return errMonitorStarted
	}
	m.started = true
	m.exited = make(chan struct{})
	go m.loop(ctx, m.exited)
	return nil
}

func (m *Monitor) loop(ctx context.Context, exited chan struct{}) {
	defer close(exited)
	defer m.shutdown()
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		m.Poll()
		select {
		case <-ctx.Done():
			return
		case <-m.quit:
			return
		case <-t.C:
		}
	}
}

// Stop stops the monitor: it ends the polling goroutine (if Start was
// called), waits for it to exit, then closes the Events channel. Later
// polls do nothing and later Register and Start calls return ErrClosed.
// Stop is idempotent and safe for concurrent use; it also works on a
// monitor that was never started.
func (m *Monitor) Stop() {
	m.init()
	m.lifeMu.Lock()
	if !m.stopping {
		m.stopping = true
		close(m.quit)
	}
	exited := m.exited
	m.lifeMu.Unlock()
	if exited != nil {
		<-exited
	}
	m.shutdown()
}

// shutdown closes the events channel once, after any poll in progress.
func (m *Monitor) shutdown() {
	m.pollMu.Lock()
	if !m.closed {
		m.closed = true
		m.done.Store(true)
		close(m.events)
	}
	m.pollMu.Unlock()
}

// Events returns the channel on which events are sent, in the order they
// were seen. It is closed when the monitor stops (Stop, or the end of
// Start's context). Sends never block the monitor: an event that finds
// the channel full is dropped and counted in MonitorStats.DroppedEvents.
func (m *Monitor) Events() <-chan Event {
	m.init()
	return m.events
}

// Poll reads every registered source once, now, and sends the events due,
// before it returns. Polls are serialised. In steady state (no event due)
// it allocates nothing. After the monitor stopped it does nothing. Safe
// for concurrent use.
func (m *Monitor) Poll() {
	m.init()
	m.pollMu.Lock()
	defer m.pollMu.Unlock()
	if m.closed {
		return
	}
	comps := m.reg.Load().comps
	now := time.Now()
	for _, c := range comps {
		if c.removed.Load() {
			continue
		}
		if c.ledger != nil {
			m.pollLedger(c, now)
			continue
		}
		m.buf = c.src.AppendReadings(m.buf[:0])
		for i := range m.buf {
			if r := &m.buf[i]; !m.atRest(c, r) {
				m.check(c, r, now)
			}
		}
	}
	m.polls.Add(1)
}

// atRest reports whether check would neither change c's state for r nor
// send an event: no new refusals, no streak or high usage to end, no store
// loss, and a usage surely below the warning threshold. It is the common
// case of a poll, decided without check's division. (With restBelow
// 2^-40 under the threshold, Used <= restBelow*Limit in floating point
// implies Used/Limit < threshold after rounding.) Called with pollMu held.
func (m *Monitor) atRest(c *component, r *Reading) bool {
	if !r.Resource.valid() {
		return true
	}
	return r.Refusals == c.refusals[r.Resource] && c.flags[r.Resource] == 0 && r.StoreLost == 0 &&
		(r.Limit <= 0 || float64(r.Used) <= m.restBelow*float64(r.Limit)) &&
		(r.RunStops == 0 || r.RunStops == c.stops[r.Resource])
}

// check updates the edge state of one reading and emits the events due.
// Called with pollMu held.
func (m *Monitor) check(c *component, r *Reading, now time.Time) {
	if !r.Resource.valid() {
		return
	}
	// The state is written only when it changes: a poll of sources at
	// rest then only reads their components.
	last, fl := &c.refusals[r.Resource], &c.flags[r.Resource]
	var refused int64
	if r.Refusals != *last {
		if r.Refusals > *last {
			refused = r.Refusals - *last
		}
		*last = r.Refusals // a source that reset its count starts a new baseline
	}

	var ratio float64
	if r.Limit > 0 {
		ratio = float64(r.Used) / float64(r.Limit)
		switch {
		case *fl&resHigh == 0 && ratio >= m.threshold:
			*fl |= resHigh
			m.emit(c, r, HighUsage, ratio, 0, now)
		case *fl&resHigh != 0 && ratio < m.recoverBelow:
			*fl &^= resHigh
			m.emit(c, r, Recovered, ratio, 0, now)
		}
	} else if *fl&resHigh != 0 {
		*fl &^= resHigh // no limit (any more): no usage events
	}
	if refusing := *fl&resRefusing != 0; refused > 0 || refusing {
		streak := refused > 0 && !refusing
		if refused > 0 {
			*fl |= resRefusing
		} else {
			*fl &^= resRefusing
		}
		if streak {
			m.emit(c, r, LimitExceeded, ratio, refused, now)
		}
	}
	if r.RunStops != c.stops[r.Resource] || *fl&resStopping != 0 {
		m.checkStops(c, r, ratio, now)
	}
	if r.StoreLost != 0 && r.StoreLost > c.lost[r.Resource] {
		lost := *r
		lost.Used = r.StoreLost - c.lost[r.Resource]
		c.lost[r.Resource] = r.StoreLost
		m.emit(c, &lost, StoreReset, 0, 0, now)
	}
}

// checkStops sends RunStopped, with the count, on the first poll of a
// streak of polls that find new run stops of r's resource, as check does
// LimitExceeded for refusals. Called with pollMu held.
func (m *Monitor) checkStops(c *component, r *Reading, ratio float64, now time.Time) {
	last, fl := &c.stops[r.Resource], &c.flags[r.Resource]
	var stopped int64
	if r.RunStops > *last {
		stopped = r.RunStops - *last
	}
	*last = r.RunStops // a source that reset its count starts a new baseline
	if stopped > 0 && *fl&resStopping == 0 {
		m.emit(c, r, RunStopped, ratio, stopped, now)
	}
	if stopped > 0 {
		*fl |= resStopping
	} else {
		*fl &^= resStopping
	}
}

// emit records and sends one event; n is the count of a LimitExceeded
// (refusals) or RunStopped (runs stopped) event. Called with pollMu held.
func (m *Monitor) emit(c *component, r *Reading, kind EventKind, ratio float64, n int64, now time.Time) {
	ev := Event{Time: now, Component: c.name, Resource: r.Resource, Kind: kind, Used: r.Used, Limit: r.Limit, Ratio: ratio, Refusals: n}
	if kind == RunStopped {
		ev.Refusals, ev.RunStops = 0, n
	}
	switch kind {
	case HighUsage:
		m.warnings.Add(1)
		c.warnings.Add(1)
	case LimitExceeded:
		m.exceeded.Add(1)
		c.exceeded.Add(1)
	case Recovered:
		m.recovered.Add(1)
	case StoreReset:
		m.storeResets.Add(1)
	}
	if m.histCap > 0 {
		m.histMu.Lock()
		if len(m.hist) < m.histCap {
			m.hist = append(m.hist, ev)
		} else {
			m.hist[m.histNext] = ev
			m.histNext = (m.histNext + 1) % m.histCap
		}
		m.histMu.Unlock()
	}
	if m.logger != nil {
		m.log(&ev)
	}
	select {
	case m.events <- ev:
	default:
		m.dropped.Add(1)
	}
}

func (m *Monitor) log(ev *Event) {
	level := slog.LevelInfo
	switch ev.Kind {
	case HighUsage, RunStopped:
		level = slog.LevelWarn
	case LimitExceeded, StoreReset:
		level = slog.LevelError
	}
	ctx := context.Background()
	if !m.logger.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 8)
	attrs = append(attrs,
		slog.String("component", ev.Component),
		slog.String("resource", ev.Resource.String()),
	)
	attrs = ev.appendValueAttrs(attrs)
	m.logger.LogAttrs(ctx, level, "reslimit monitor: "+ev.Kind.String(), attrs...)
}

// Stats reads every registered source now and returns the sums of
// their current usage, the monitor's event counters and per-component
// usage. It does not wait for a poll in progress. Safe for concurrent use.
func (m *Monitor) Stats() MonitorStats {
	m.init()
	comps := m.reg.Load().comps
	s := MonitorStats{
		Warnings:       m.warnings.Load(),
		LimitsExceeded: m.exceeded.Load(),
		Recoveries:     m.recovered.Load(),
		StoreResets:    m.storeResets.Load(),
		DroppedEvents:  m.dropped.Load(),
		Polls:          m.polls.Load(),
		PerComponent:   make(map[string]ComponentStats, len(comps)),
	}
	for _, c := range comps {
		if c.removed.Load() {
			continue
		}
		if c.ledger != nil {
			c.tenMu.Lock()
			subs := make([]*component, 0, len(c.tenants))
			for _, sub := range c.tenants {
				subs = append(subs, sub)
			}
			c.tenMu.Unlock()
			for _, sub := range subs {
				s.addComponent(sub)
			}
			continue
		}
		s.addComponent(c)
	}
	return s
}

// addComponent adds c's current readings and event counts to s.
func (s *MonitorStats) addComponent(c *component) {
	{
		cs := ComponentStats{
			Readings:       c.src.AppendReadings(nil),
			Warnings:       c.warnings.Load(),
			LimitsExceeded: c.exceeded.Load(),
		}
		for _, r := range cs.Readings {
			switch r.Resource {
			case Memory:
				cs.MemoryBytes = satAdd(cs.MemoryBytes, r.Used)
			case Operations:
				cs.Operations = satAdd(cs.Operations, r.Used)
			case Concurrency:
				cs.Concurrent = satAdd(cs.Concurrent, r.Used)
			}
		}
		s.Components++
		s.PerComponent[c.name] = cs
		if !c.builtin {
			s.TotalMemoryBytes = satAdd(s.TotalMemoryBytes, cs.MemoryBytes)
			s.TotalOperations = satAdd(s.TotalOperations, cs.Operations)
			s.ConcurrentOperations = satAdd(s.ConcurrentOperations, cs.Concurrent)
		}
	}
}

// History returns a copy of the latest events (at most HistorySize),
// oldest first. Safe for concurrent use.
func (m *Monitor) History() []Event {
	m.init()
	m.histMu.Lock()
	defer m.histMu.Unlock()
	out := make([]Event, 0, len(m.hist))
	out = append(out, m.hist[m.histNext:]...)
	out = append(out, m.hist[:m.histNext]...)
	return out
}

// ClearHistory forgets the events kept for History. The counters of
// Stats are not affected. Safe for concurrent use.
func (m *Monitor) ClearHistory() {
	m.init()
	m.histMu.Lock()
	clear(m.hist)
	m.hist = m.hist[:0]
	m.histNext = 0
	m.histMu.Unlock()
}

// processSource is the process memory backstop: a Source with one Memory
// reading of the Go runtime's memory, read from runtime/metrics.
type processSource struct {
	limit int64 // configured limit, 0: the runtime's

	mu      sync.Mutex
	samples [3]metrics.Sample
}

const (
	metricTotal    = "/memory/classes/total:bytes"
	metricReleased = "/memory/classes/heap/released:bytes"
	metricLimit    = "/gc/gomemlimit:bytes"
)

func newProcessSource(limit int64) *processSource {
	p := &processSource{limit: limit}
	p.samples[0].Name = metricTotal
	p.samples[1].Name = metricReleased
	p.samples[2].Name = metricLimit
	return p
}

// AppendReadings implements Source. The limit is 0 (none) when neither a
// limit was configured nor a runtime memory limit is set.
func (p *processSource) AppendReadings(dst []Reading) []Reading {
	p.mu.Lock()
	metrics.Read(p.samples[:])
	total := sampleInt(&p.samples[0])
	released := sampleInt(&p.samples[1])
	rtLimit := sampleInt(&p.samples[2])
	p.mu.Unlock()
	lim := p.limit
	if lim == 0 && rtLimit > 0 && rtLimit < math.MaxInt64 {
		lim = rtLimit
	}
	return append(dst, Reading{Resource: Memory, Used: max(total-released, 0), Limit: lim})
}

func sampleInt(s *metrics.Sample) int64 {
	if s.Value.Kind() != metrics.KindUint64 {
		return 0
	}
	v := s.Value.Uint64()
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}
