package reslimit

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// No configuration or input mistake lets work run unbilled: a tenant that
// cannot be opened gets an account that refuses every run, and a nil
// account in the context fails the run; fn never runs.
func TestRunsWithoutAValidTenantFailClosed(t *testing.T) {
	ledger := mustLedger(t, AccountLimits{MaxEvaluations: 1}, WithTenantLimits(func(tenant string) AccountLimits {
		if tenant == "broken-plan" {
			return AccountLimits{MaxTotalOperations: -1}
		}
		return AccountLimits{MaxEvaluations: 1}
	}))
	cases := []struct {
		name string
		acct *Account
		want error
	}{
		{"empty tenant", ledger.Account(""), ErrInvalidArgument},
		{"invalid plan", ledger.Account("broken-plan"), ErrInvalidLimits},
		{"nil account", nil, ErrInvalidArgument},
	}
	for _, tc := range cases {
		if tc.acct != nil {
			require.ErrorIs(t, tc.acct.Err(), tc.want, tc.name)
			_, err := tc.acct.Begin(Unlimited())
			require.ErrorIs(t, err, tc.want, tc.name)
		}
		ran := 0
		tool := Limit(func(ctx context.Context, _ int) (int, error) {
			ran++
			return 0, FromContext(ctx).TrackOperation()
		}, Strict())
		for i := 0; i < 5; i++ {
			ctx := ContextWithAccount(context.Background(), tc.acct)
			_, err := Run(ctx, Unlimited(), func(context.Context) error { ran++; return nil })
			require.ErrorIs(t, err, tc.want, tc.name)
			_, err = tool(ctx, i)
			require.ErrorIs(t, err, tc.want, tc.name)
		}
		require.Zero(t, ran, "%s: work ran without a tenant to bill", tc.name)
	}
	_, ok := ledger.Lookup("")
	require.False(t, ok, "a refusing account is not kept")
	require.NoError(t, ledger.Account("good").Err())
}

// The zero Account refuses every run with a clear error; the zero Ledger
// is a ledger without limits.
func TestZeroAccountAndLedger(t *testing.T) {
	var a Account
	_, err := a.Begin(Unlimited())
	require.ErrorIs(t, err, ErrInvalidArgument)
	_, err = Run(context.Background(), Unlimited(), func(context.Context) error { return nil }, WithAccount(&a))
	require.ErrorIs(t, err, ErrInvalidArgument)
	require.Zero(t, a.Stats().Evaluations)

	var l Ledger
	acct := l.Account("acme")
	require.NoError(t, acct.Err())
	_, err = Run(context.Background(), Unlimited(), func(ctx context.Context) error {
		return FromContext(ctx).TrackOperations(3)
	}, WithAccount(acct))
	require.NoError(t, err)
	require.Equal(t, int64(3), acct.Stats().Operations)
	require.Equal(t, []string{"acme"}, l.Tenants())
}

// The zero Tracker counts with no limits and reads no wall time (it never
// started); its guards give back what they hold.
func TestZeroTrackerCountsWithoutLimits(t *testing.T) {
	var tr Tracker
	require.NoError(t, tr.TrackOperations(3))
	require.NoError(t, tr.TrackCall())
	g, err := tr.AcquireMemory(10)
	require.NoError(t, err)
	s, err := tr.TryAcquireSlot()
	require.NoError(t, err)
	u := tr.Usage()
	assert.Equal(t, int64(3), u.Operations)
	assert.Equal(t, int64(10), u.MemoryBytes)
	assert.Equal(t, int64(1), u.Concurrent)
	assert.Zero(t, u.WallTime, "a zero Tracker never started")
	g.Release()
	s.Release()
	u = tr.End()
	assert.Zero(t, u.MemoryBytes)
	assert.Zero(t, u.WallTime)
	assert.ErrorIs(t, tr.TrackOperation(), ErrClosed)
}
