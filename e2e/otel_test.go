package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/reslimit/reslimit"
	reslimitotel "github.com/reslimit/reslimit/contrib/otel"
)

// otelFigures are the figures reslimitotel reported for one tenant.
type otelFigures struct {
	granted  granted
	cpu      time.Duration    // from float64 seconds, to the nanosecond
	refusals map[string]int64 // by resource, the ones above 0
}

// otelReport is one collection of reslimitotel's metrics, by tenant.
type otelReport map[string]*otelFigures

func (r otelReport) of(attrs attribute.Set) (*otelFigures, string) {
	tenant, _ := attrs.Value(reslimitotel.AttrTenant)
	res, _ := attrs.Value(reslimitotel.AttrResource)
	f := r[tenant.AsString()]
	if f == nil {
		f = &otelFigures{refusals: map[string]int64{}}
		r[tenant.AsString()] = f
	}
	return f, res.AsString()
}

// collectOTel collects reader once.
func collectOTel(t *testing.T, reader *sdkmetric.ManualReader) otelReport {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := otelReport{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Gauge[float64]:
				for _, dp := range d.DataPoints {
					if f, _ := out.of(dp.Attributes); m.Name == "reslimit.tenant.usage.cpu_time" {
						f.cpu = time.Duration(dp.Value*1e9 + 0.5)
					}
				}
			case metricdata.Gauge[int64]:
				for _, dp := range d.DataPoints {
					f, _ := out.of(dp.Attributes)
					switch m.Name {
					case "reslimit.tenant.usage.evaluations":
						f.granted.Evaluations = dp.Value
					case "reslimit.tenant.usage.operations":
						f.granted.Operations = dp.Value
					case "reslimit.tenant.usage.function_calls":
						f.granted.Calls = dp.Value
					case "reslimit.tenant.usage.total_memory":
						f.granted.TotalMemory = dp.Value
					}
				}
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					if f, res := out.of(dp.Attributes); m.Name == "reslimit.tenant.refusals" && dp.Value > 0 {
						f.refusals[res] = dp.Value
					}
				}
			}
		}
	}
	delete(out, "") // the ledger-wide series
	return out
}

// The OpenTelemetry exporter composed with the rest: on replica r1 of a
// fleet of two on one store, after the load and a sync, reslimitotel
// reports per tenant the fleet-wide totals that the bill then shows,
// exactly (CPU time within the store's microsecond rounding), and the
// refusals that r1 answered.
func TestOTelReportsTheBill(t *testing.T) {
	plans := map[string]reslimit.AccountLimits{
		"acme": {MaxTotalOperations: 1e9},
		"beta": {MaxEvaluations: 7},
	}
	f := newFleet(t, fleetConfig{replicas: 2, plans: plans, request: reslimit.Limits{Timeout: 20 * time.Second}})
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	reg, err := reslimitotel.Register(f.replicas[0].ledger, reslimitotel.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()

	want, refusedR1 := otelLoad(t, f)
	f.SyncAll()
	got := collectOTel(t, reader)
	for _, tenant := range sortedTenants(plans) {
		g := got[tenant]
		if g == nil {
			t.Fatalf("no series of tenant %s: %v", tenant, got)
		}
		if g.granted != want[tenant] {
			t.Errorf("tenant %s: reslimitotel on r1 reports %v, the load was granted %v", tenant, g.granted, want[tenant])
		}
		if w := refusedR1[tenant]; !sameRefusals(g.refusals, w) {
			t.Errorf("tenant %s: reslimitotel on r1 reports refusals %v, r1 answered %v", tenant, g.refusals, w)
		}
	}
	if refusedR1["beta"]["evaluations"] == 0 {
		t.Errorf("beta was never refused by r1: the test does not test refusals")
	}

	checkBill(t, f, want) // lines == store == want, per tenant
	lines := f.sumLines(t)
	for _, tenant := range sortedTenants(plans) {
		var bill granted
		var cpu time.Duration
		for k, tot := range lines {
			if k.tenant == tenant {
				bill = bill.add(totalsOf(tot))
				cpu += tot.CPUTime
			}
		}
		if g := got[tenant]; g.granted != bill {
			t.Errorf("tenant %s: reslimitotel reported %v, the bill shows %v", tenant, g.granted, bill)
		}
		if d := (got[tenant].cpu - cpu).Abs(); d >= time.Duration(len(f.replicas))*time.Microsecond {
			t.Errorf("tenant %s: reslimitotel reported CPU %v, the bill %v", tenant, got[tenant].cpu, cpu)
		}
	}
}

// otelLoad sends requests in turn to each replica for each tenant, some
// of which stop at their own limit (billed) and, for beta, past its
// quota of evaluations (refused, not billed); it returns what each tenant
// was granted, and r1's refusals of the tenants' limits by resource.
func otelLoad(t *testing.T, f *fleet) (map[string]granted, map[string]map[string]int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	want := map[string]granted{}
	refused := map[string]map[string]int64{}
	plans := []string{"host,ops", "ops,overrun", "host"}
	for i := range 6 {
		for _, r := range f.replicas {
			for _, tenant := range sortedTenants(f.cfg.plans) {
				resp, err := f.do(ctx, r, tenant, plans[i%len(plans)])
				if err != nil {
					t.Fatalf("request %d for %s to %s: %v", i, tenant, r.id, err)
				}
				want[tenant] = want[tenant].add(resp.granted)
				if resp.status == http.StatusOK {
					continue
				}
				if p := checkRefusal(resp, tenant, true, false); p != "" {
					t.Errorf("request %d for %s to %s: %s", i, tenant, r.id, p)
				}
				if r == f.replicas[0] && resp.body.Scope == "tenant" {
					if refused[tenant] == nil {
						refused[tenant] = map[string]int64{}
					}
					refused[tenant][resp.body.Resource]++
				}
			}
		}
	}
	return want, refused
}

func sameRefusals(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
