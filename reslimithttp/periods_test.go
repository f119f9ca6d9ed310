package reslimithttp_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimithttp"
)

// tenantOf returns the tenant named name of snap.
func tenantOf(t *testing.T, snap reslimithttp.Snapshot, name string) reslimithttp.TenantSnapshot {
	t.Helper()
	for _, ts := range snap.Tenants {
		if ts.Name == name {
			return ts
		}
	}
	t.Fatalf("no tenant %q in the snapshot", name)
	return reslimithttp.TenantSnapshot{}
}

// The snapshot shows a tenant's runs stopped by their own limits, its
// open period (number, start, scheduled close) and its previous period's
// line; after a close the usage starts over, the run stops do not. The
// monitor's run_stopped event carries its count.
func TestSnapshotRunStopsAndPeriods(t *testing.T) {
	end := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	ledger := mustLedger(t, reslimit.AccountLimits{},
		reslimit.WithPeriodSchedule(func(time.Time) time.Time { return end }))
	t.Cleanup(func() { require.NoError(t, ledger.Close(context.Background())) })
	mon, err := reslimit.NewMonitor(reslimit.MonitorConfig{})
	require.NoError(t, err)
	defer mon.Stop()
	require.NoError(t, mon.RegisterLedger("", ledger))
	evil := ledger.Account("evil")
	mon.Poll()

	tool := reslimit.Limit(func(ctx context.Context, n int64) (int64, error) {
		return n, reslimit.FromContext(ctx).TrackOperations(n)
	}, reslimit.Limits{MaxOperations: 10})
	for _, n := range []int64{5, 11, 12} {
		_, err := reslimit.Run(context.Background(), reslimit.Limits{}, func(ctx context.Context) error {
			_, err := tool(ctx, n)
			return err // the request returns its tool's stop: one stop
		}, reslimit.WithAccount(evil))
		if n > 10 {
			require.ErrorIs(t, err, reslimit.ErrLimitExceeded)
		}
	}
	mon.Poll()

	snap := reslimithttp.TakeSnapshot(ledger, mon)
	ts := tenantOf(t, snap, "evil")
	assert.Equal(t, map[string]int64{"operations": 2}, ts.RunStops)
	assert.Equal(t, map[string]int64{}, ts.Refusals)
	assert.EqualValues(t, 1, ts.Period)
	assert.Equal(t, evil.Stats().PeriodStart.UTC(), ts.PeriodStart)
	require.NotNil(t, ts.PeriodEnd)
	assert.Equal(t, end, *ts.PeriodEnd)
	assert.Nil(t, ts.PreviousPeriod, "no period closed yet")
	require.NotEmpty(t, snap.Monitor.Events)
	ev := snap.Monitor.Events[0]
	assert.Equal(t, reslimithttp.EventSnapshot{Time: ev.Time, Component: "evil", Resource: "operations", Kind: "run_stopped",
		Unit: "count", Used: 5, RunStops: 2}, ev)

	lines := ledger.ClosePeriod()
	require.Len(t, lines, 1)
	snap = reslimithttp.TakeSnapshot(ledger, mon)
	ts = tenantOf(t, snap, "evil")
	assert.EqualValues(t, 2, ts.Period)
	assert.Equal(t, lines[0].End.UTC(), ts.PeriodStart)
	assert.Equal(t, end, *ts.PeriodEnd)
	assert.Zero(t, ts.Evaluations, "the open period's usage starts over")
	assert.Zero(t, ts.Operations)
	assert.Equal(t, map[string]int64{"operations": 2}, ts.RunStops, "run stops are not cleared")
	assert.Equal(t, &reslimithttp.PeriodSnapshot{Number: 1, Start: lines[0].Start.UTC(), End: lines[0].End.UTC(),
		Evaluations: 3, Operations: 5, CPUTimeSeconds: lines[0].CPUTime.Seconds(), Final: true}, ts.PreviousPeriod)

	noSchedule := mustLedger(t, reslimit.AccountLimits{})
	noSchedule.Account("a")
	assert.Nil(t, tenantOf(t, reslimithttp.TakeSnapshot(noSchedule, nil), "a").PeriodEnd)
}
