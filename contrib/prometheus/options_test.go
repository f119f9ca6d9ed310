package reslimitprom_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	reslimitprom "github.com/reslimit/reslimit/contrib/prometheus"
)

// Invalid option values are errors at construction, never ignored.
func TestInvalidOptions(t *testing.T) {
	ledger := mustLedger(t, reslimit.AccountLimits{})
	for name, tc := range map[string]struct {
		opt  reslimitprom.Option
		want string
	}{
		"WithMaxTenants":   {reslimitprom.WithMaxTenants(-1), "WithMaxTenants(-1)"},
		"WithMonitor":      {reslimitprom.WithMonitor(nil), "WithMonitor(nil)"},
		"WithOtherTenant":  {reslimitprom.WithOtherTenant("x\xff"), "WithOtherTenant"},
		"WithTenantFilter": {reslimitprom.WithTenantFilter(nil), "WithTenantFilter(nil)"},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := reslimitprom.NewCollector(ledger, tc.opt)
			require.Error(t, err)
			assert.Nil(t, c)
			assert.True(t, errors.Is(err, reslimit.ErrInvalidArgument), "%v", err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// The first invalid option is the one reported; valid ones around it do
// not hide it.
func TestFirstInvalidOptionReported(t *testing.T) {
	_, err := reslimitprom.NewCollector(nil,
		reslimitprom.WithMaxTenants(5), reslimitprom.WithMaxTenants(-2), reslimitprom.WithOtherTenant("\xfe"))
	require.ErrorIs(t, err, reslimit.ErrInvalidArgument)
	assert.Contains(t, err.Error(), "WithMaxTenants(-2)")
}

// The edge values that are valid stay valid: 0 tenants is no cap, ""
// drops the other tenant, an empty allow list allows no tenant, a nil
// Option is skipped.
func TestValidEdgeOptions(t *testing.T) {
	c, err := reslimitprom.NewCollector(nil,
		reslimitprom.WithMaxTenants(0), reslimitprom.WithOtherTenant(""),
		reslimitprom.WithAllowList(), nil)
	require.NoError(t, err)
	assert.NotNil(t, c)
}
