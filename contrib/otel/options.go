package reslimitotel

import (
	"fmt"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/reslimit/reslimit"
)

// DefaultMaxTenants is how many tenants get series of their own by default.
const DefaultMaxTenants = 1000

// DefaultOtherTenant is the tenant attribute of the sum of the tenants that
// do not get series of their own.
const DefaultOtherTenant = "_other"

// Option configures Register.
type Option func(*config)

type config struct {
	provider metric.MeterProvider // nil: the global one
	monitor  *reslimit.Monitor
	max      int
	allow    func(string) bool
	other    string
	attrs    []attribute.KeyValue
	err      error // the first invalid option
}

func (c *config) setErr(err error) {
	if c.err == nil {
		c.err = err
	}
}

// WithMeterProvider registers the instruments on a Meter of mp (scope
// ScopeName) instead of the global MeterProvider (otel.GetMeterProvider).
// A nil mp is invalid.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) {
		if mp == nil {
			c.setErr(fmt.Errorf("%w: reslimitotel: WithMeterProvider(nil)", reslimit.ErrInvalidArgument))
			return
		}
		c.provider = mp
	}
}

// WithMonitor also exports the counters of m (reslimit.Monitor.Stats),
// read in the same callback as the ledger. A nil m is invalid.
func WithMonitor(m *reslimit.Monitor) Option {
	return func(c *config) {
		if m == nil {
			c.setErr(fmt.Errorf("%w: reslimitotel: WithMonitor(nil)", reslimit.ErrInvalidArgument))
			return
		}
		c.monitor = m
	}
}

// WithMaxTenants sets how many tenants get series of their own (default
// DefaultMaxTenants). 0 removes the cap: only do that when the tenants are
// few and known. A negative n is invalid.
func WithMaxTenants(n int) Option {
	return func(c *config) {
		if n < 0 {
			c.setErr(fmt.Errorf("%w: reslimitotel: WithMaxTenants(%d): negative", reslimit.ErrInvalidArgument, n))
			return
		}
		c.max = n
	}
}

// WithTenantFilter lets only the tenants for which allow returns true get
// series of their own (still within WithMaxTenants); the others count as
// overflow. allow is called during collections, and must be fast and safe
// for concurrent use. A nil allow is invalid (without the option every
// tenant is allowed).
func WithTenantFilter(allow func(tenant string) bool) Option {
	return func(c *config) {
		if allow == nil {
			c.setErr(fmt.Errorf("%w: reslimitotel: WithTenantFilter(nil)", reslimit.ErrInvalidArgument))
			return
		}
		c.allow = allow
	}
}

// WithOtherTenant sets the tenant attribute under which the tenants that do
// not get series of their own are summed (default DefaultOtherTenant). ""
// drops them; reslimit.tenant.overflow still counts them. A real tenant
// with that name counts as overflow. A name that is not valid UTF-8 is
// invalid (exporters such as OTLP require valid UTF-8 strings).
func WithOtherTenant(name string) Option {
	return func(c *config) {
		if !utf8.ValidString(name) {
			c.setErr(fmt.Errorf("%w: reslimitotel: WithOtherTenant(%q): not valid UTF-8", reslimit.ErrInvalidArgument, name))
			return
		}
		c.other = name
	}
}

// WithAttributes adds kvs to the attributes of every series, for example
// the name of a ledger when several ledgers report on one MeterProvider.
// A key AttrTenant or AttrResource, or an invalid KeyValue (an empty key,
// no value), is invalid. Later WithAttributes add to earlier ones.
func WithAttributes(kvs ...attribute.KeyValue) Option {
	return func(c *config) {
		for _, kv := range kvs {
			if !kv.Valid() || kv.Key == AttrTenant || kv.Key == AttrResource {
				c.setErr(fmt.Errorf("%w: reslimitotel: WithAttributes(%s=%s): an invalid or reserved attribute", reslimit.ErrInvalidArgument, kv.Key, kv.Value.Emit()))
				return
			}
		}
		c.attrs = append(c.attrs, kvs...)
	}
}
