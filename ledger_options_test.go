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
		"WithFailurePolicy": WithFailurePolicy(FailClosed),
		"WithLeaseWait":     WithLeaseWait(time.Second),
		"WithLogger":        WithLogger(slog.Default()),
	} {
		l, err := NewLedger(AccountLimits{}, opt)
		require.ErrorIs(t, err, ErrInvalidArgument, name)
		assert.Contains(t, err.Error(), name+" needs WithStore")
		assert.Nil(t, l)
	}
}

// withLeaseTTL sets the lease period a replica announces to the store
// (by default 3 sync intervals, at least 100ms), for tests of leases that
// expire.
func withLeaseTTL(d time.Duration) LedgerOption {
	return func(l *Ledger) { l.fleet.ttl = d }
}

// withSyncTimeout sets the bound of one round trip to the store (by
// default 2s), for tests of a store that answers late.
func withSyncTimeout(d time.Duration) LedgerOption {
	return func(l *Ledger) { l.fleet.syncTimeout = d }
}
