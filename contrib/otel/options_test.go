package reslimitotel_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/reslimit/reslimit"
	reslimitotel "github.com/reslimit/reslimit/contrib/otel"
)

// Invalid option values, and a nil ledger, are errors at construction,
// never ignored, and register nothing.
func TestInvalidOptions(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	for name, tc := range map[string]struct {
		ledger *reslimit.Ledger
		opt    reslimitotel.Option
		want   string
	}{
		"nil ledger":               {nil, nil, "Register(nil ledger)"},
		"WithMaxTenants":           {ledger, reslimitotel.WithMaxTenants(-1), "WithMaxTenants(-1)"},
		"WithMeterProvider":        {ledger, reslimitotel.WithMeterProvider(nil), "WithMeterProvider(nil)"},
		"WithMonitor":              {ledger, reslimitotel.WithMonitor(nil), "WithMonitor(nil)"},
		"WithOtherTenant":          {ledger, reslimitotel.WithOtherTenant("x\xff"), "WithOtherTenant"},
		"WithTenantFilter":         {ledger, reslimitotel.WithTenantFilter(nil), "WithTenantFilter(nil)"},
		"WithAttributes tenant":    {ledger, reslimitotel.WithAttributes(attribute.String("ledger", "eu"), attribute.String("tenant", "x")), "WithAttributes(tenant=x)"},
		"WithAttributes resource":  {ledger, reslimitotel.WithAttributes(reslimitotel.AttrResource.String("x")), "WithAttributes(resource=x)"},
		"WithAttributes empty key": {ledger, reslimitotel.WithAttributes(attribute.KeyValue{}), "WithAttributes(="},
	} {
		t.Run(name, func(t *testing.T) {
			reader := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
			defer mp.Shutdown(context.Background())
			reg, err := reslimitotel.Register(tc.ledger, reslimitotel.WithMeterProvider(mp), tc.opt)
			require.Error(t, err)
			assert.Nil(t, reg)
			assert.ErrorIs(t, err, reslimit.ErrInvalidArgument)
			assert.Contains(t, err.Error(), tc.want)
			h := harness{reader: reader}
			assert.Empty(t, h.points(t), "nothing registered")
		})
	}
}

// The first invalid option is the one reported; valid ones around it do
// not hide it.
func TestFirstInvalidOptionReported(t *testing.T) {
	_, err := reslimitotel.Register(mustLedger(t, reslimit.AccountLimits{}),
		reslimitotel.WithMaxTenants(5), reslimitotel.WithMaxTenants(-2), reslimitotel.WithOtherTenant("\xfe"))
	require.ErrorIs(t, err, reslimit.ErrInvalidArgument)
	assert.Contains(t, err.Error(), "WithMaxTenants(-2)")
}

// The edge values that are valid stay valid, and a nil Option is skipped.
func TestValidEdgeOptions(t *testing.T) {
	h := register(t, mustLedger(t, reslimit.AccountLimits{}),
		reslimitotel.WithMaxTenants(0), reslimitotel.WithOtherTenant(""), nil)
	assert.Equal(t, map[string]float64{"reslimit.tenant.count": 0, "reslimit.tenant.overflow": 0}, h.points(t))
}

// Without WithMeterProvider, Register uses the global MeterProvider.
func TestGlobalMeterProvider(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	otel.SetMeterProvider(mp)
	ledger, _ := threeTenants(t)
	reg, err := reslimitotel.Register(ledger)
	require.NoError(t, err)
	defer reg.Unregister()
	h := harness{reader: reader}
	assert.Equal(t, 3.0, h.points(t)["reslimit.tenant.count"])
}

// refusingMeter is a no-op Meter that refuses one float64 gauge, or the
// callback.
type refusingMeter struct {
	noop.Meter
	gauge    string
	callback bool
}

func (m refusingMeter) Float64ObservableGauge(name string, opts ...metric.Float64ObservableGaugeOption) (metric.Float64ObservableGauge, error) {
	if name == m.gauge {
		return nil, errors.New("refused")
	}
	return m.Meter.Float64ObservableGauge(name, opts...)
}

func (m refusingMeter) RegisterCallback(f metric.Callback, in ...metric.Observable) (metric.Registration, error) {
	if m.callback {
		return nil, errors.New("no callbacks")
	}
	return m.Meter.RegisterCallback(f, in...)
}

type refusingProvider struct {
	noop.MeterProvider
	meter refusingMeter
}

func (p refusingProvider) Meter(string, ...metric.MeterOption) metric.Meter { return p.meter }

// An instrument the Meter refuses, or a callback it does not register, is
// Register's error.
func TestMeterErrors(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	_, err := reslimitotel.Register(ledger, reslimitotel.WithMeterProvider(refusingProvider{meter: refusingMeter{gauge: "reslimit.tenant.limit.cpu_time"}}))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "reslimit.tenant.limit.cpu_time: refused")
	_, err = reslimitotel.Register(ledger, reslimitotel.WithMeterProvider(refusingProvider{meter: refusingMeter{callback: true}}))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no callbacks")
	reg, err := reslimitotel.Register(ledger, reslimitotel.WithMeterProvider(refusingProvider{}))
	require.NoError(t, err)
	assert.NoError(t, reg.Unregister())
}

// Two ledgers on one MeterProvider, told apart by WithAttributes: each
// tenant's series once per ledger, each with its own ledger's figures.
func TestTwoLedgersOneProvider(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	for i, region := range []string{"eu", "us"} {
		ledger := mustLedger(t, reslimit.AccountLimits{})
		run(t, ledger.Account("acme"), int64(3+i), 0, 0)
		reg, err := reslimitotel.Register(ledger, reslimitotel.WithMeterProvider(mp),
			reslimitotel.WithAttributes(attribute.String("region", region)), reslimitotel.WithAttributes(attribute.Int("n", i)))
		require.NoError(t, err)
		defer reg.Unregister()
	}
	h := harness{reader: reader}
	got := h.points(t)
	assert.Equal(t, map[string]float64{
		"reslimit.tenant.usage.operations{n=0,region=eu,resource=operations,tenant=acme}": 3,
		"reslimit.tenant.usage.operations{n=1,region=us,resource=operations,tenant=acme}": 4,
	}, only(got, "reslimit.tenant.usage.operations"))
	assert.Equal(t, map[string]float64{
		"reslimit.tenant.evaluations{n=0,region=eu,tenant=acme}": 1,
		"reslimit.tenant.evaluations{n=1,region=us,tenant=acme}": 1,
	}, only(got, "reslimit.tenant.evaluations"))
	assert.Equal(t, map[string]float64{
		"reslimit.tenant.count{n=0,region=eu}": 1,
		"reslimit.tenant.count{n=1,region=us}": 1,
	}, only(got, "reslimit.tenant.count"))
}
