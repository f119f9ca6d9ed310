package reslimit

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// With WithLeaseWait(0), a refusal for want of lease does not ask for a
// sync (fleet.go:477 returns before :480). An idle tenant whose lease has
// lapsed is not due either (dueLocked), so it is refused for ever.
func TestFleetLeaseWaitZeroIdleTenantStarves(t *testing.T) {
	store := NewMemoryStore()
	l := newFleetLedger(t, store, "r1", AccountLimits{MaxEvaluations: 100},
		WithSyncInterval(5*time.Millisecond), WithLeaseTTL(20*time.Millisecond), WithLeaseWait(0))
	acct := l.Account("t")
	require.Eventually(t, func() bool { return acct.Stats().Fleet.Lease.Evaluations > 0 }, time.Second, time.Millisecond)
	tr, err := acct.Begin(Unlimited())
	require.NoError(t, err)
	tr.End()
	time.Sleep(100 * time.Millisecond) // idle: the lease lapses
	var ok bool
	var last error
	for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline) && !ok; time.Sleep(5 * time.Millisecond) {
		tr, err := acct.Begin(Unlimited())
		if err == nil {
			ok = true
			tr.End()
		}
		last = err
	}
	assert.True(t, ok, "1 of 100 evaluations used, refused for 500ms: %v", last)
}
