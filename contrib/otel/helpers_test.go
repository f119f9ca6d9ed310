package reslimitotel_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"

	"github.com/reslimit/reslimit"
	reslimitotel "github.com/reslimit/reslimit/contrib/otel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// harness is a MeterProvider with a ManualReader, and the Registration of
// Register on it.
type harness struct {
	reader *sdkmetric.ManualReader
	reg    interface{ Unregister() error }
}

// register calls Register on a fresh provider with a manual reader.
func register(t *testing.T, ledger *reslimit.Ledger, opts ...reslimitotel.Option) *harness {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { require.NoError(t, mp.Shutdown(context.Background())) })
	reg, err := reslimitotel.Register(ledger, append([]reslimitotel.Option{reslimitotel.WithMeterProvider(mp)}, opts...)...)
	require.NoError(t, err)
	return &harness{reader: reader, reg: reg}
}

// collect runs one collection and returns its one scope's metrics by name.
// It fails t with Error, not Fatal, so that goroutines may call it.
func (h *harness) collect(t *testing.T) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	assert.NoError(t, h.reader.Collect(context.Background(), &rm))
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		assert.Equal(t, reslimitotel.ScopeName, sm.Scope.Name)
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// points runs one collection and returns every data point as
// "name{key=value,...}" (attributes in key order) -> value, int64 values
// as float64. Like collect, goroutines may call it.
func (h *harness) points(t *testing.T) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for name, m := range h.collect(t) {
		switch d := m.Data.(type) {
		case metricdata.Gauge[int64]:
			addPoints(out, name, d.DataPoints)
		case metricdata.Gauge[float64]:
			addPoints(out, name, d.DataPoints)
		case metricdata.Sum[int64]:
			addPoints(out, name, d.DataPoints)
		case metricdata.Sum[float64]:
			addPoints(out, name, d.DataPoints)
		default:
			t.Errorf("%s: unexpected aggregation %T", name, m.Data)
		}
	}
	return out
}

func addPoints[N int64 | float64](out map[string]float64, name string, dps []metricdata.DataPoint[N]) {
	for _, dp := range dps {
		out[name+attrString(dp.Attributes)] = float64(dp.Value)
	}
}

func attrString(s attribute.Set) string {
	if s.Len() == 0 {
		return ""
	}
	var parts []string
	for _, kv := range s.ToSlice() {
		parts = append(parts, string(kv.Key)+"="+kv.Value.Emit())
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// only returns the points of p whose key starts with one of prefixes.
func only(p map[string]float64, prefixes ...string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range p {
		for _, pre := range prefixes {
			if strings.HasPrefix(k, pre) {
				out[k] = v
			}
		}
	}
	return out
}

// keys returns the keys of p, sorted (for failure messages).
func keys(p map[string]float64) string {
	ks := make([]string, 0, len(p))
	for k := range p {
		ks = append(ks, fmt.Sprintf("%s=%v", k, p[k]))
	}
	sort.Strings(ks)
	return strings.Join(ks, "\n")
}

func mustLedger(t *testing.T, l reslimit.AccountLimits, opts ...reslimit.LedgerOption) *reslimit.Ledger {
	t.Helper()
	ledger, err := reslimit.NewLedger(l, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, ledger.Close(context.Background())) })
	return ledger
}

// run runs one finished run of a: ops operations, mem bytes charged and
// released, cpu CPU time added.
func run(t *testing.T, a *reslimit.Account, ops, mem int64, cpu time.Duration) {
	t.Helper()
	tr, err := a.Begin(reslimit.Limits{})
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(ops))
	if mem > 0 {
		require.NoError(t, tr.TrackMemory(mem))
		tr.ReleaseMemory(mem)
	}
	require.NoError(t, tr.AddCPUTime(cpu))
	tr.End()
}
