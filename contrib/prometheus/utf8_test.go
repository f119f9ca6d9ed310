package reslimitprom_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	reslimitprom "github.com/reslimit/reslimit/contrib/prometheus"
)

// Issue 11, item 8: a tenant name that is not valid UTF-8 must not make
// the collector fail, and /metrics answer 500 for every tenant.
func TestTenantNamesThatAreNotUTF8(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{MaxEvaluations: 10})
	for _, name := range []string{"good", "bad\xff", "bad\xfe", "bad\uFFFD", "_other\xff"} {
		acct := ledger.Account(name)
		require.NotNil(t, acct, "%q", name)
		tr, err := acct.Begin(reslimit.Limits{})
		require.NoError(t, err)
		require.NoError(t, tr.TrackOperations(7))
		tr.End()
	}
	for _, opts := range [][]reslimitprom.Option{nil, {reslimitprom.WithOtherTenant("bad\uFFFD")}} {
		reg := prom.NewRegistry()
		require.NoError(t, reg.Register(mustCollector(t, ledger, opts...)))
		mfs, err := reg.Gather()
		require.NoError(t, err)

		ops := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() != "reslimit_tenant_usage" {
				continue
			}
			for _, m := range mf.GetMetric() {
				var tenant, res string
				for _, lp := range m.GetLabel() {
					switch lp.GetName() {
					case "tenant":
						tenant = lp.GetValue()
					case "resource":
						res = lp.GetValue()
					}
				}
				if res == "operations" {
					ops[tenant] += m.GetGauge().GetValue()
				}
			}
		}
		var sum float64
		for tenant, v := range ops {
			assert.True(t, strings.ToValidUTF8(tenant, "") == tenant, "label %q", tenant)
			sum += v
		}
		assert.Equal(t, float64(7), ops["good"])
		assert.Equal(t, float64(5*7), sum, "every tenant is counted once: %v", ops)

		srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		resp, err := http.Get(srv.URL)
		require.NoError(t, err)
		resp.Body.Close()
		srv.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode)
	}
}
