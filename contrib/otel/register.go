package reslimitotel

import (
	"context"
	"fmt"
	"math"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/reslimit/reslimit"
)

// ScopeName is the instrumentation scope of the Meter that Register
// registers its instruments on: the module path.
const ScopeName = "github.com/reslimit/reslimit/contrib/otel"

// The attribute keys of the per-tenant metrics.
const (
	// AttrTenant is the tenant's name (Ledger.Account's name), or the
	// other tenant's (WithOtherTenant).
	AttrTenant = attribute.Key("tenant")
	// AttrResource is the reslimit.Resource's String name, such as
	// "operations" or "evaluation_rate".
	AttrResource = attribute.Key("resource")
)

// Register creates the observable instruments of ledger's accounts (and of
// the WithMonitor monitor) on a Meter of the global MeterProvider, or of
// WithMeterProvider's, and registers one callback that reads them all at
// each collection (see the package doc for the metrics). Call Unregister
// on the returned Registration to stop reporting: the instruments stay,
// with no data points. The callback is safe for concurrent collections.
//
// Register each ledger once per MeterProvider. Several ledgers on one
// provider need WithAttributes to tell their series apart: series of two
// callbacks with the same attributes are one series, whose gauges keep
// one ledger's value and counters add both.
//
// A nil ledger or an invalid option value is an error wrapping
// reslimit.ErrInvalidArgument, and nothing is registered. An instrument
// that the Meter refuses, or a failed RegisterCallback, is an error too
// (wrapping the Meter's), and nothing is registered either.
func Register(ledger *reslimit.Ledger, opts ...Option) (metric.Registration, error) {
	c := config{max: DefaultMaxTenants, other: DefaultOtherTenant}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if ledger == nil {
		c.setErr(fmt.Errorf("%w: reslimitotel: Register(nil ledger)", reslimit.ErrInvalidArgument))
	}
	if c.err != nil {
		return nil, c.err
	}
	mp := c.provider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	e := &exporter{ledger: ledger, cfg: c, known: map[string]struct{}{}}
	var b builder
	b.meter = mp.Meter(ScopeName)
	e.newInstruments(&b)
	if b.err != nil {
		return nil, fmt.Errorf("reslimitotel: creating the instruments: %w", b.err)
	}
	reg, err := b.meter.RegisterCallback(e.observe, b.all...)
	if err != nil {
		return nil, fmt.Errorf("reslimitotel: registering the callback: %w", err)
	}
	return reg, nil
}

// instrument is one observable instrument: int64, or float64 seconds (f
// set).
type instrument struct {
	i metric.Int64Observable
	f metric.Float64Observable
}

// observe records v: a count or bytes as it is, nanoseconds as seconds
// on a float64 instrument.
func (in instrument) observe(o metric.Observer, v int64, attrs metric.ObserveOption) {
	if in.f != nil {
		o.ObserveFloat64(in.f, float64(v)/1e9, attrs)
		return
	}
	o.ObserveInt64(in.i, v, attrs)
}

// builder creates instruments on meter, keeping every one (for
// RegisterCallback) and the first error.
type builder struct {
	meter metric.Meter
	all   []metric.Observable
	err   error
}

func (b *builder) add(name, unit, desc string, k kind, float bool) instrument {
	var in instrument
	var err error
	u, d := metric.WithUnit(unit), metric.WithDescription(desc)
	switch {
	case float && k == counter:
		in.f, err = b.meter.Float64ObservableCounter(name, u, d)
	case float:
		in.f, err = b.meter.Float64ObservableGauge(name, u, d)
	case k == counter:
		in.i, err = b.meter.Int64ObservableCounter(name, u, d)
	default:
		in.i, err = b.meter.Int64ObservableGauge(name, u, d)
	}
	if err != nil {
		if b.err == nil {
			b.err = fmt.Errorf("%s: %w", name, err)
		}
		return in
	}
	if in.f != nil {
		b.all = append(b.all, in.f)
	} else {
		b.all = append(b.all, in.i)
	}
	return in
}

// newInstruments creates e's instruments from the tables of metrics.go.
func (e *exporter) newInstruments(b *builder) {
	for _, u := range usageResources {
		float := u.unit == "s"
		name := u.res.String()
		e.usage = append(e.usage, b.add("reslimit.tenant.usage."+name, u.unit, usageDesc(u.res, u.held), gauge, float))
		e.limit = append(e.limit, b.add("reslimit.tenant.limit."+name, u.unit, limitDesc(u.res), gauge, float))
		e.remaining = append(e.remaining, b.add("reslimit.tenant.remaining."+name, u.unit, remainingDesc(u.res), gauge, float))
	}
	for _, m := range byResource {
		e.byResource = append(e.byResource, b.add(m.name, m.unit, m.desc, counter, false))
	}
	for _, m := range perTenant {
		e.perTenant = append(e.perTenant, b.add(m.name, m.unit, m.desc, m.kind, false))
	}
	e.tenants = b.add(nameTenants, "{tenant}", "Tenant accounts in the ledger.", gauge, false)
	e.overflow = b.add(nameOverflow, "{tenant}",
		"Tenant accounts not reported with series of their own in this collection (over the cap or not allowed).", gauge, false)
	if e.cfg.monitor != nil {
		for _, m := range perMonitor {
			e.perMonitor = append(e.perMonitor, b.add(m.name, m.unit, m.desc, m.kind, false))
		}
	}
}

// resourceAttrs are the AttrResource values of every resource.
var resourceAttrs = func() map[reslimit.Resource]attribute.KeyValue {
	out := map[reslimit.Resource]attribute.KeyValue{}
	for _, r := range reslimit.Resources() {
		out[r] = AttrResource.String(r.String())
	}
	return out
}()

// with returns the attributes of one series: the WithAttributes ones and
// kvs.
func (e *exporter) with(kvs ...attribute.KeyValue) metric.ObserveOption {
	if len(e.cfg.attrs) == 0 {
		return metric.WithAttributes(kvs...)
	}
	all := make([]attribute.KeyValue, 0, len(e.cfg.attrs)+len(kvs))
	return metric.WithAttributes(append(append(all, e.cfg.attrs...), kvs...)...)
}

// observe is the callback: one reading of the monitor and the ledger.
func (e *exporter) observe(_ context.Context, o metric.Observer) error {
	if e.cfg.monitor != nil {
		st := e.cfg.monitor.Stats()
		for i, m := range perMonitor {
			e.perMonitor[i].observe(o, m.read(&st), e.with())
		}
	}
	snap := e.ledger.Snapshot()
	names, labels := e.labels(snap)
	other := newAggregate()
	for _, name := range names {
		st := snap[name]
		if label, ok := labels[name]; ok {
			e.observeTenant(o, label, &st)
			continue
		}
		other.add(&st)
	}
	none := e.with()
	e.tenants.observe(o, int64(len(names)), none)
	e.overflow.observe(o, other.n, none)
	if other.n > 0 && e.cfg.other != "" {
		e.observeOther(o, other)
	}
	return nil
}

// observeTenant records the series of one tenant's account.
func (e *exporter) observeTenant(o metric.Observer, label string, st *reslimit.AccountStats) {
	tenant := AttrTenant.String(label)
	for i, u := range usageResources {
		attrs := e.with(tenant, resourceAttrs[u.res])
		e.usage[i].observe(o, u.used(st), attrs)
		if ls, ok := st.LimitStatus[u.res]; ok {
			e.limit[i].observe(o, ls.Limit, attrs)
			e.remaining[i].observe(o, ls.Remaining, attrs)
		}
	}
	for i, m := range byResource {
		counts := m.read(st)
		for _, r := range m.resources {
			e.byResource[i].observe(o, counts[r], e.with(tenant, resourceAttrs[r]))
		}
	}
	one := e.with(tenant)
	for i, m := range perTenant {
		e.perTenant[i].observe(o, m.read(st), one)
	}
}

// aggregate sums the figures of the tenants that do not get series of
// their own, by table row.
type aggregate struct {
	n          int64
	usage      []int64   // by usageResources
	byResource [][]int64 // by byResource, then its resources
	perTenant  []int64   // by perTenant (the summed rows)
}

func newAggregate() *aggregate {
	a := &aggregate{usage: make([]int64, len(usageResources)), perTenant: make([]int64, len(perTenant))}
	for _, m := range byResource {
		a.byResource = append(a.byResource, make([]int64, len(m.resources)))
	}
	return a
}

func (a *aggregate) add(st *reslimit.AccountStats) {
	a.n++
	for i, u := range usageResources {
		a.usage[i] = saturatingAdd(a.usage[i], u.used(st))
	}
	for i, m := range byResource {
		counts := m.read(st)
		for j, r := range m.resources {
			a.byResource[i][j] = saturatingAdd(a.byResource[i][j], counts[r])
		}
	}
	for i, m := range perTenant {
		if m.summed {
			a.perTenant[i] = saturatingAdd(a.perTenant[i], m.read(st))
		}
	}
}

// observeOther records the other tenant's series: the sums, without
// limits (the summed tenants' limits are not one limit).
func (e *exporter) observeOther(o metric.Observer, a *aggregate) {
	tenant := AttrTenant.String(e.cfg.other)
	for i, u := range usageResources {
		e.usage[i].observe(o, a.usage[i], e.with(tenant, resourceAttrs[u.res]))
	}
	for i, m := range byResource {
		for j, r := range m.resources {
			e.byResource[i].observe(o, a.byResource[i][j], e.with(tenant, resourceAttrs[r]))
		}
	}
	one := e.with(tenant)
	for i, m := range perTenant {
		if m.summed {
			e.perTenant[i].observe(o, a.perTenant[i], one)
		}
	}
}

// saturatingAdd returns a+b, or math.MaxInt64 when a positive b makes it
// overflow: a sum of many tenants never wraps negative.
func saturatingAdd(a, b int64) int64 {
	s := a + b
	if b > 0 && s < a {
		return math.MaxInt64
	}
	return s
}
