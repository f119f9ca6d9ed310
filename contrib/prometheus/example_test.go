package reslimitprom_test

import (
	"context"
	"fmt"
	"sort"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/reslimit/reslimit"
	reslimitprom "github.com/reslimit/reslimit/contrib/prometheus"
)

// ExampleNewCollector registers the collector of a ledger on a registry
// and gathers it, as a /metrics handler (promhttp.HandlerFor) would.
func ExampleNewCollector() {
	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{MaxTotalOperations: 1000})
	if err != nil {
		panic(err)
	}
	defer ledger.Close(context.Background())
	_, err = reslimit.Run(context.Background(), reslimit.Limits{}, func(ctx context.Context) error {
		return reslimit.FromContext(ctx).TrackOperations(250)
	}, reslimit.WithAccount(ledger.Account("acme")))
	if err != nil {
		panic(err)
	}

	collector, err := reslimitprom.NewCollector(ledger, reslimitprom.WithMaxTenants(100))
	if err != nil {
		panic(err)
	}
	reg := prom.NewRegistry()
	reg.MustRegister(collector)
	families, err := reg.Gather()
	if err != nil {
		panic(err)
	}
	var names []string
	for _, mf := range families {
		names = append(names, mf.GetName())
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Println(name)
	}
	for _, mf := range families {
		if mf.GetName() != "reslimit_tenant_remaining" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			fmt.Printf("%s{tenant=%q,resource=%q} %v\n", mf.GetName(), labels["tenant"], labels["resource"], m.GetGauge().GetValue())
		}
	}
	// Output:
	// reslimit_run_stops_total
	// reslimit_tenant_evaluations_total
	// reslimit_tenant_exhausted
	// reslimit_tenant_limit
	// reslimit_tenant_period
	// reslimit_tenant_period_start_seconds
	// reslimit_tenant_refusals_total
	// reslimit_tenant_remaining
	// reslimit_tenant_running
	// reslimit_tenant_usage
	// reslimit_tenants
	// reslimit_tenants_overflow
	// reslimit_tenant_remaining{tenant="acme",resource="operations"} 750
}
