package reslimit

import (
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The options that configure the fleet are an error without a store,
// never silently ignored (issue 20.3).
func TestLedgerFleetOptionsNeedAStore(t *testing.T) {
	for name, opt := range map[string]LedgerOption{
		"WithReplica":       WithReplica("r1"),
		"WithSyncInterval":  WithSyncInterval(time.Second),
		"WithLeaseTTL":      WithLeaseTTL(time.Second),
		"WithFailurePolicy": WithFailurePolicy(FailClosed),
		"WithSyncTimeout":   WithSyncTimeout(time.Second),
		"WithLeaseWait":     WithLeaseWait(time.Second),
		"WithLogger":        WithLogger(slog.Default()),
	} {
		l, err := NewLedger(AccountLimits{}, opt)
		require.ErrorIs(t, err, ErrInvalidArgument, name)
		assert.Contains(t, err.Error(), name+" needs WithStore")
		assert.Nil(t, l)
	}
}
