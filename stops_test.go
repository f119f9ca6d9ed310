package reslimit

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A run that ends with a *LimitError of its own limits is a run stop of
// its account, by resource, whichever way it ends; a run that survived a
// refusal, a tenant's refusal and a run that failed otherwise are not.
func TestRunStopsCountedPerResource(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxEvaluations: 6})
	ctx := ContextWithAccount(context.Background(), a)

	// Begin, a refused charge, EndWithError with it.
	tr, err := a.Begin(Limits{MaxOperations: 5})
	require.NoError(t, err)
	err = tr.TrackOperations(6)
	require.ErrorIs(t, err, ErrLimitExceeded)
	tr.EndWithError(err)

	// A run that handles its refusal and succeeds was not stopped.
	tr, err = a.Begin(Limits{MaxMemoryBytes: 10})
	require.NoError(t, err)
	require.Error(t, tr.TrackMemory(11))
	tr.End()

	// Run: its timeout stops it, whatever fn returns.
	_, err = Run(ctx, Limits{Timeout: time.Millisecond}, func(ctx context.Context) error {
		<-ctx.Done()
		return errors.New("gave up")
	})
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// A file too big, returned wrapped.
	_, err = Run(ctx, Limits{MaxFileSize: 10}, func(ctx context.Context) error {
		if err := FromContext(ctx).CheckFileSize(11); err != nil {
			return fmt.Errorf("writing the report: %w", err)
		}
		return nil
	})
	require.ErrorIs(t, err, ErrLimitExceeded)

	// Another error is not a stop.
	_, err = Run(ctx, Limits{}, func(ctx context.Context) error { return errors.New("bad input") })
	require.Error(t, err)

	// A refusal by the tenant is one of its Refusals, not a run stop.
	_, err = Run(ctx, Limits{}, func(ctx context.Context) error { return nil })
	require.NoError(t, err)
	_, err = Run(ctx, Limits{}, func(ctx context.Context) error { return nil })
	require.ErrorIs(t, err, ErrLimitExceeded)

	st := a.Stats()
	assert.Equal(t, map[Resource]int64{Operations: 1, Timeout: 1, FileSize: 1}, st.RunStops)
	assert.Equal(t, map[Resource]int64{Evaluations: 1}, st.Refusals)
	assert.Nil(t, newAcct(t, AccountLimits{}).Stats().RunStops, "nil when no run was stopped")
}

// A stop that a nested run (a tool) passes on to the run it is nested in
// (the request that returns the tool's error) is one run stop, billed to
// the request's account; so is a request's stop that halts its live
// tools.
func TestRunStopsNestedCountOnce(t *testing.T) {
	a := newAcct(t, AccountLimits{})
	tool := Limit(func(ctx context.Context, n int64) (int64, error) {
		return n, FromContext(ctx).TrackOperations(n)
	}, Limits{MaxOperations: 10})
	request := func(fn func(ctx context.Context) error) error {
		_, err := Run(context.Background(), Limits{}, fn, WithAccount(a))
		return err
	}

	err := request(func(ctx context.Context) error {
		_, err := tool(ctx, 11)
		return fmt.Errorf("the tool failed: %w", err)
	})
	require.ErrorIs(t, err, ErrLimitExceeded)
	assert.Equal(t, map[Resource]int64{Operations: 1}, a.Stats().RunStops, "the tool's stop, passed on, is one")

	// Two stopped tools, the request returning the first one's error.
	err = request(func(ctx context.Context) error {
		_, first := tool(ctx, 11)
		_, second := tool(ctx, 12)
		require.Error(t, second)
		return first
	})
	require.ErrorIs(t, err, ErrLimitExceeded)
	assert.Equal(t, map[Resource]int64{Operations: 3}, a.Stats().RunStops)

	// The request's timeout halts its two live tools: one stop.
	waiter := Limit(func(ctx context.Context, _ struct{}) (struct{}, error) {
		<-ctx.Done()
		return struct{}{}, context.Cause(ctx)
	}, Limits{})
	_, err = Run(context.Background(), Limits{Timeout: 5 * time.Millisecond}, func(ctx context.Context) error {
		tr := FromContext(ctx)
		for range 2 {
			tr.Go(func() { _, _ = waiter(ctx, struct{}{}) })
		}
		<-ctx.Done()
		return context.Cause(ctx)
	}, WithAccount(a))
	var le *LimitError
	require.ErrorAs(t, err, &le)
	assert.Equal(t, Timeout, le.Resource)
	assert.Equal(t, map[Resource]int64{Operations: 3, Timeout: 1}, a.Stats().RunStops)
}

// Run stops are never cleared: not by a period close, unlike the period's
// totals.
func TestRunStopsSurviveAPeriodClose(t *testing.T) {
	l := mustLedger(t, AccountLimits{})
	a := l.Account("acme")
	tr, err := a.Begin(Limits{MaxOperations: 1})
	require.NoError(t, err)
	tr.EndWithError(tr.TrackOperations(2))
	l.ClosePeriod()
	a.Reset()
	st := a.Stats()
	assert.Equal(t, uint64(3), st.Period)
	assert.Zero(t, st.Evaluations)
	assert.Equal(t, map[Resource]int64{Operations: 1}, st.RunStops)
}

// With a schedule, Stats says when the open period closes: the schedule's
// next close after its start, also after a close by hand; without one,
// PeriodEnd is zero.
func TestStatsPeriodEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := mustLedger(t, AccountLimits{}, WithPeriod(time.Hour))
		start := time.Now()
		hour := start.Truncate(time.Hour).Add(time.Hour)
		a := l.Account("acme")
		st := a.Stats()
		assert.Equal(t, uint64(1), st.Period)
		assert.Equal(t, start, st.PeriodStart)
		assert.Equal(t, hour, st.PeriodEnd)

		time.Sleep(hour.Sub(start) + time.Minute) // the fake clock passes the hour
		synctest.Wait()
		st = a.Stats()
		assert.Equal(t, uint64(2), st.Period)
		assert.Equal(t, hour, st.PeriodStart)
		assert.Equal(t, hour.Add(time.Hour), st.PeriodEnd)

		time.Sleep(time.Minute)
		l.ClosePeriod() // by hand: the schedule's next close stays
		st = a.Stats()
		assert.Equal(t, uint64(3), st.Period)
		assert.Equal(t, hour.Add(2*time.Minute), st.PeriodStart)
		assert.Equal(t, hour.Add(time.Hour), st.PeriodEnd)
		require.NoError(t, l.Close(context.Background()))
	})
	plain := mustLedger(t, AccountLimits{}).Account("acme").Stats()
	assert.Equal(t, uint64(1), plain.Period)
	assert.True(t, plain.PeriodEnd.IsZero(), "no schedule: %v", plain.PeriodEnd)
	assert.True(t, newAcct(t, AccountLimits{}).Stats().PeriodEnd.IsZero())
}

// A Monitor sends RunStopped for an account's run stops, once per streak
// of polls that find new ones, with their count; a resource only runs
// limit (timeout) is read only once it stopped a run.
func TestMonitorRunStopped(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxTotalOperations: 100})
	m := newTestMonitor(t, MonitorConfig{})
	for _, r := range a.AppendReadings(nil) {
		assert.NotEqual(t, Timeout, r.Resource, "no reading of timeout before a stop")
	}
	require.NoError(t, m.Register("tenant/acme", a))
	stop := func() { // 2 operations, then stopped
		tr, err := a.Begin(Limits{MaxOperations: 2})
		require.NoError(t, err)
		require.NoError(t, tr.TrackOperations(2))
		tr.EndWithError(tr.TrackOperation())
	}
	stop()
	stop()
	m.Poll()
	evs := drain(t, m)
	require.Len(t, evs, 1)
	assert.Equal(t, Event{Time: evs[0].Time, Component: "tenant/acme", Resource: Operations, Kind: RunStopped,
		Used: 4, Limit: 100, Ratio: 0.04, RunStops: 2}, evs[0])

	stop()
	assert.Empty(t, pollKinds(t, m), "the streak goes on: no new event")
	assert.Empty(t, pollKinds(t, m), "a quiet poll ends it")

	_, err := Run(context.Background(), Limits{Timeout: time.Millisecond}, func(ctx context.Context) error {
		<-ctx.Done()
		return nil
	}, WithAccount(a))
	require.Error(t, err)
	stop()
	m.Poll()
	evs = drain(t, m)
	require.Len(t, evs, 2)
	assert.Equal(t, []string{"tenant/acme/operations/run_stopped", "tenant/acme/timeout/run_stopped"}, kinds(evs))
	assert.Equal(t, int64(1), evs[0].RunStops)
	assert.Equal(t, Event{Time: evs[1].Time, Component: "tenant/acme", Resource: Timeout, Kind: RunStopped, RunStops: 1}, evs[1])
	assert.Equal(t, map[Resource]int64{Operations: 4, Timeout: 1}, a.Stats().RunStops)
}

// An account's rate readings carry the bucket: the burst as Limit, the
// tokens in use as Used; so the Monitor's rate events do too.
func TestRateReadingsCarryTheBucket(t *testing.T) {
	a := newAcct(t, AccountLimits{EvaluationsPerSecond: 0.001, EvaluationBurst: 4})
	rate := func() Reading {
		for _, r := range a.AppendReadings(nil) {
			if r.Resource == EvaluationRate {
				return r
			}
		}
		t.Fatal("no evaluation_rate reading")
		return Reading{}
	}
	assert.Equal(t, Reading{Resource: EvaluationRate, Limit: 4}, rate())
	m := newTestMonitor(t, MonitorConfig{WarningThreshold: 0.75})
	require.NoError(t, m.Register("tenant/acme", a))
	for range 3 {
		tr, err := a.Begin(Limits{})
		require.NoError(t, err)
		tr.End()
	}
	assert.Equal(t, Reading{Resource: EvaluationRate, Used: 3, Limit: 4}, rate())
	m.Poll()
	evs := drain(t, m)
	require.Len(t, evs, 1)
	assert.Equal(t, Event{Time: evs[0].Time, Component: "tenant/acme", Resource: EvaluationRate, Kind: HighUsage,
		Used: 3, Limit: 4, Ratio: 0.75}, evs[0])

	tr, err := a.Begin(Limits{})
	require.NoError(t, err)
	tr.End()
	_, err = a.Begin(Limits{})
	require.ErrorIs(t, err, ErrLimitExceeded)
	m.Poll()
	evs = drain(t, m)
	require.Len(t, evs, 1)
	assert.Equal(t, Event{Time: evs[0].Time, Component: "tenant/acme", Resource: EvaluationRate, Kind: LimitExceeded,
		Used: 4, Limit: 4, Ratio: 1, Refusals: 1}, evs[0])

	ops := newAcct(t, AccountLimits{OperationsPerSecond: 0.001, OperationBurst: 100})
	tr, err = ops.Begin(Limits{})
	require.NoError(t, err)
	require.NoError(t, tr.TrackOperations(30))
	tr.End() // the room it took ahead and did not use comes back
	for _, r := range ops.AppendReadings(nil) {
		if r.Resource == OperationRate {
			assert.Equal(t, Reading{Resource: OperationRate, Used: 30, Limit: 100}, r)
		}
	}
}
