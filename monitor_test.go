package reslimit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeSource is a Source whose readings the test sets.
type fakeSource struct {
	mu       sync.Mutex
	readings []Reading
}

func newFake(rs ...Reading) *fakeSource { return &fakeSource{readings: rs} }

func (f *fakeSource) AppendReadings(dst []Reading) []Reading {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append(dst, f.readings...)
}

// set changes the reading of r (adding it if missing).
func (f *fakeSource) set(r Resource, used, limit, refusals int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.readings {
		if f.readings[i].Resource == r {
			f.readings[i] = Reading{Resource: r, Used: used, Limit: limit, Refusals: refusals}
			return
		}
	}
	f.readings = append(f.readings, Reading{Resource: r, Used: used, Limit: limit, Refusals: refusals})
}

// drain returns the events waiting in the channel, without blocking.
func drain(t *testing.T, m *Monitor) []Event {
	t.Helper()
	var out []Event
	for {
		select {
		case ev, ok := <-m.Events():
			if !ok {
				return out
			}
			out = append(out, ev)
		default:
			return out
		}
	}
}

// kinds summarises events as "component/resource/kind" strings.
func kinds(evs []Event) []string {
	out := make([]string, 0, len(evs))
	for _, e := range evs {
		out = append(out, e.Component+"/"+e.Resource.String()+"/"+e.Kind.String())
	}
	return out
}

func newTestMonitor(t *testing.T, cfg MonitorConfig) *Monitor {
	t.Helper()
	m, err := NewMonitor(cfg)
	require.NoError(t, err)
	t.Cleanup(m.Stop)
	return m
}

// pollKinds polls once and returns the kinds of the events it sent.
func pollKinds(t *testing.T, m *Monitor) []string {
	t.Helper()
	m.Poll()
	return kinds(drain(t, m))
}

func TestNewMonitorDefaults(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{})
	assert.Equal(t, defaultWarningThreshold, m.threshold)
	assert.Equal(t, time.Second, m.interval)
	assert.Equal(t, defaultMonitorHistory, m.histCap)
	assert.Equal(t, defaultEventBuffer, cap(m.Events()))
	assert.Equal(t, 0, m.Stats().Components)

	m2 := newTestMonitor(t, MonitorConfig{WarningThreshold: 1, CheckInterval: time.Minute, HistorySize: 3, EventBuffer: 7})
	assert.Equal(t, 1.0, m2.threshold)
	assert.Equal(t, time.Minute, m2.interval)
	assert.Equal(t, 3, m2.histCap)
	assert.Equal(t, 7, cap(m2.Events()))
}

func TestNewMonitorInvalid(t *testing.T) {
	cases := []struct {
		name string
		cfg  MonitorConfig
		want error
	}{
		{"negative threshold", MonitorConfig{WarningThreshold: -0.1}, ErrInvalidArgument},
		{"threshold above one", MonitorConfig{WarningThreshold: 1.01}, ErrInvalidArgument},
		{"NaN threshold", MonitorConfig{WarningThreshold: math.NaN()}, ErrInvalidArgument},
		{"infinite threshold", MonitorConfig{WarningThreshold: math.Inf(1)}, ErrInvalidArgument},
		{"negative interval", MonitorConfig{CheckInterval: -time.Second}, ErrInvalidArgument},
		{"negative buffer", MonitorConfig{EventBuffer: -1}, ErrInvalidArgument},
		{"negative history", MonitorConfig{HistorySize: -1}, ErrInvalidArgument},
		{"negative process limit", MonitorConfig{WatchProcess: true, ProcessMemoryLimit: -1}, ErrInvalidLimits},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := NewMonitor(tc.cfg)
			require.ErrorIs(t, err, tc.want)
			assert.Nil(t, m)
		})
	}
}

func TestEventKindText(t *testing.T) {
	for k, name := range map[EventKind]string{HighUsage: "high_usage", LimitExceeded: "limit_exceeded", Recovered: "recovered", StoreReset: "store_reset", RunStopped: "run_stopped"} {
		assert.Equal(t, name, k.String())
		b, err := k.MarshalText()
		require.NoError(t, err)
		assert.Equal(t, name, string(b))
		var back EventKind
		require.NoError(t, back.UnmarshalText(b))
		assert.Equal(t, k, back)
	}
	assert.Equal(t, "event_kind(0)", EventKind(0).String())
	_, err := EventKind(9).MarshalText()
	assert.Error(t, err)
	var k EventKind
	assert.Error(t, k.UnmarshalText([]byte("bogus")))
}

func TestEventJSON(t *testing.T) {
	ev := Event{Component: "c", Resource: Memory, Kind: HighUsage, Used: 8, Limit: 10, Ratio: 0.8}
	b, err := json.Marshal(ev)
	require.NoError(t, err)
	assert.Contains(t, string(b), `"Resource":"memory"`)
	assert.Contains(t, string(b), `"Kind":"high_usage"`)
	var back Event
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, ev, back)
}

// Usage events fire once per crossing of the warning threshold, with
// hysteresis; a usage at (or past) its limit without a refusal is HighUsage,
// never LimitExceeded.
func TestMonitorOncePerCrossingWithHysteresis(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{WarningThreshold: 0.8})
	src := newFake(Reading{Resource: Memory, Used: 50, Limit: 100})
	require.NoError(t, m.Register("svc", src))

	steps := []struct {
		used int64
		want []string
	}{
		{50, nil},
		{79, nil},
		{80, []string{"svc/memory/high_usage"}}, // threshold reached: inclusive
		{85, nil},                               // still high: no repeat
		{90, nil},
		{100, nil}, // usage at the limit is allowed: nothing was refused
		{100, nil},
		{97, nil},
		{79, nil}, // hovering just under the threshold: no flapping
		{80, nil},
		{76, nil},
		{74, []string{"svc/memory/recovered"}}, // below threshold-hysteresis
		{74, nil},
		{79, nil},
		{100, []string{"svc/memory/high_usage"}}, // a new crossing, straight to the limit
	}
	for i, s := range steps {
		src.set(Memory, s.used, 100, 0)
		assert.Equal(t, s.want, nilIfEmpty(pollKinds(t, m)), "step %d (used %d)", i, s.used)
	}
	st := m.Stats()
	assert.Equal(t, int64(2), st.Warnings)
	assert.Equal(t, int64(0), st.LimitsExceeded)
	assert.Equal(t, int64(1), st.Recoveries)
	assert.Equal(t, int64(len(steps)), st.Polls)
	assert.Equal(t, int64(2), st.PerComponent["svc"].Warnings)
	assert.Equal(t, int64(0), st.PerComponent["svc"].LimitsExceeded)
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func TestMonitorEventFields(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := newTestMonitor(t, MonitorConfig{})
		src := newFake(Reading{Resource: Operations, Used: 90, Limit: 100})
		require.NoError(t, m.Register("svc", src))
		m.Poll()
		evs := drain(t, m)
		require.Len(t, evs, 1)
		assert.Equal(t, Event{
			Time: time.Now(), Component: "svc", Resource: Operations, Kind: HighUsage,
			Used: 90, Limit: 100, Ratio: 0.9,
		}, evs[0])
	})
}

func TestMonitorJumpPastLimitIsHighUsage(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{})
	src := newFake(Reading{Resource: Calls, Used: 120, Limit: 100})
	require.NoError(t, m.Register("svc", src))
	m.Poll()
	evs := drain(t, m)
	assert.Equal(t, []string{"svc/function_calls/high_usage"}, kinds(evs))
	assert.InDelta(t, 1.2, evs[0].Ratio, 1e-9)

	src.set(Calls, 10, 100, 0)
	assert.Equal(t, []string{"svc/function_calls/recovered"}, pollKinds(t, m))
}

func TestMonitorThresholdOne(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{WarningThreshold: 1})
	src := newFake(Reading{Resource: Memory, Used: 99, Limit: 100})
	require.NoError(t, m.Register("svc", src))
	assert.Empty(t, pollKinds(t, m))
	src.set(Memory, 100, 100, 0)
	assert.Equal(t, []string{"svc/memory/high_usage"}, pollKinds(t, m))
	src.set(Memory, 96, 100, 0)
	assert.Empty(t, pollKinds(t, m))
	src.set(Memory, 94, 100, 0)
	assert.Equal(t, []string{"svc/memory/recovered"}, pollKinds(t, m))
}

// At the edge of the warning threshold, where rounding decides, a poll
// sends HighUsage exactly when Used/Limit >= WarningThreshold in float64,
// however large the limit: the poll's shortcut for readings at rest hides
// no crossing.
func TestMonitorThresholdEdgeIsExact(t *testing.T) {
	limits := []int64{3, 7, 10, 100, 1000, 999_999_937, 1 << 40, 1<<53 + 1, 1 << 62}
	for _, th := range []float64{0.8, 0.9, 0.95, 1.0 / 3, 0.7, 0.1, 1} {
		m := newTestMonitor(t, MonitorConfig{WarningThreshold: th})
		src := newFake()
		require.NoError(t, m.Register("svc", src))
		for _, lim := range limits {
			edge := int64(th * float64(lim))
			for used := edge - 3; used <= edge+3; used++ {
				want := float64(used)/float64(lim) >= th
				src.set(Memory, used, lim, 0)
				got := pollKinds(t, m)
				if want {
					assert.Equal(t, []string{"svc/memory/high_usage"}, got, "threshold %v, used %d of %d", th, used, lim)
				} else {
					assert.Empty(t, got, "threshold %v, used %d of %d", th, used, lim)
				}
				src.set(Memory, 0, lim, 0) // back below: Recovered if it was high
				m.Poll()
				drain(t, m)
			}
		}
	}
}

// A tenant running 8 of its 8 concurrent calls, none refused, gets one
// HighUsage and no LimitExceeded, however long it stays there; the first
// refusal is a LimitExceeded.
func TestMonitorFullButNotRefusedIsNotExceeded(t *testing.T) {
	a := newAcct(t, AccountLimits{MaxConcurrent: 8})
	m := newTestMonitor(t, MonitorConfig{})
	require.NoError(t, m.Register("tenant", a))
	var runs []*Tracker
	for i := 0; i < 8; i++ {
		tr, err := a.Begin(Unlimited())
		require.NoError(t, err)
		runs = append(runs, tr)
	}
	assert.Equal(t, []string{"tenant/concurrent_operations/high_usage"}, pollKinds(t, m))
	for i := 0; i < 5; i++ {
		assert.Empty(t, pollKinds(t, m))
	}
	_, err := a.Begin(Unlimited())
	require.ErrorIs(t, err, ErrLimitExceeded)
	assert.Equal(t, []string{"tenant/concurrent_operations/limit_exceeded"}, pollKinds(t, m))
	for _, tr := range runs {
		tr.End()
	}
}

func TestMonitorSmallThresholdStillRecovers(t *testing.T) {
	// With a threshold below the hysteresis, half the threshold is used.
	m := newTestMonitor(t, MonitorConfig{WarningThreshold: 0.04})
	src := newFake(Reading{Resource: Memory, Used: 4, Limit: 100})
	require.NoError(t, m.Register("svc", src))
	assert.Equal(t, []string{"svc/memory/high_usage"}, pollKinds(t, m))
	src.set(Memory, 2, 100, 0)
	assert.Empty(t, pollKinds(t, m))
	src.set(Memory, 1, 100, 0)
	assert.Equal(t, []string{"svc/memory/recovered"}, pollKinds(t, m))
}

func TestMonitorNoLimitNoUsageEvents(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{})
	src := newFake(Reading{Resource: Memory, Used: math.MaxInt32, Limit: 0})
	require.NoError(t, m.Register("svc", src))
	assert.Empty(t, pollKinds(t, m))

	// Refusals still count, even without a limit.
	src.set(Memory, math.MaxInt32, 0, 2)
	m.Poll()
	evs := drain(t, m)
	require.Len(t, evs, 1)
	assert.Equal(t, LimitExceeded, evs[0].Kind)
	assert.Equal(t, int64(2), evs[0].Refusals)
	assert.Equal(t, 0.0, evs[0].Ratio)
}

func TestMonitorLimitRemovedForgetsLevel(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{})
	src := newFake(Reading{Resource: Memory, Used: 90, Limit: 100})
	require.NoError(t, m.Register("svc", src))
	assert.Equal(t, []string{"svc/memory/high_usage"}, pollKinds(t, m))
	src.set(Memory, 90, 0, 0) // limit removed: silent
	assert.Empty(t, pollKinds(t, m))
	src.set(Memory, 90, 100, 0) // limit back: a new crossing
	assert.Equal(t, []string{"svc/memory/high_usage"}, pollKinds(t, m))
}

func TestMonitorTrackerRefusal(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{})
	tr, err := NewTracker(Limits{MaxOperations: 10})
	require.NoError(t, err)
	t.Cleanup(func() { tr.End() })
	require.NoError(t, m.Register("tool", tr))

	require.NoError(t, tr.TrackOperations(5))
	assert.Empty(t, pollKinds(t, m))

	require.ErrorIs(t, tr.TrackOperations(6), ErrLimitExceeded)
	m.Poll()
	evs := drain(t, m)
	require.Len(t, evs, 1)
	assert.Equal(t, Event{Time: evs[0].Time, Component: "tool", Resource: Operations, Kind: LimitExceeded,
		Used: 5, Limit: 10, Ratio: 0.5, Refusals: 1}, evs[0])

	assert.Empty(t, pollKinds(t, m), "a refusal fires once")

	require.Error(t, tr.TrackOperations(6))
	require.Error(t, tr.TrackOperations(7))
	m.Poll()
	evs = drain(t, m)
	require.Len(t, evs, 1)
	assert.Equal(t, int64(2), evs[0].Refusals)

	// Reaching the limit and being refused in one poll, after a quiet
	// poll: the crossing and the refusal.
	assert.Empty(t, pollKinds(t, m))
	require.NoError(t, tr.TrackOperations(5))
	require.Error(t, tr.TrackOperation())
	assert.Equal(t, []string{"tool/operations/high_usage", "tool/operations/limit_exceeded"}, pollKinds(t, m))
}

func TestMonitorRefusalStreakFiresOnce(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{})
	src := newFake(Reading{Resource: Operations, Used: 1, Limit: 100})
	require.NoError(t, m.Register("svc", src))
	var kinds []string
	for i := int64(1); i <= 5; i++ { // new refusals on every poll: one streak
		src.set(Operations, 1, 100, i)
		kinds = append(kinds, pollKinds(t, m)...)
	}
	assert.Equal(t, []string{"svc/operations/limit_exceeded"}, kinds)
	assert.Empty(t, pollKinds(t, m), "a quiet poll ends the streak")
	src.set(Operations, 1, 100, 6)
	assert.Equal(t, []string{"svc/operations/limit_exceeded"}, pollKinds(t, m), "the next refusal starts a new one")
	assert.Equal(t, int64(2), m.Stats().LimitsExceeded)
}

func TestMonitorAccountRefusal(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{})
	acct, err := NewAccount("acme", AccountLimits{MaxEvaluations: 1})
	require.NoError(t, err)
	require.NoError(t, m.Register("tenant/acme", acct))

	run, err := acct.Begin(Limits{})
	require.NoError(t, err)
	run.End()
	assert.Equal(t, []string{"tenant/acme/evaluations/high_usage"}, pollKinds(t, m), "used up, nothing refused yet")

	_, err = acct.Begin(Limits{})
	require.ErrorIs(t, err, ErrLimitExceeded)
	m.Poll()
	evs := drain(t, m)
	require.Len(t, evs, 1)
	assert.Equal(t, LimitExceeded, evs[0].Kind)
	assert.Equal(t, Evaluations, evs[0].Resource)
	assert.Equal(t, int64(1), evs[0].Refusals)
}

func TestMonitorRefusalsBeforeRegisterIgnored(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{})
	tr, err := NewTracker(Limits{MaxOperations: 1})
	require.NoError(t, err)
	t.Cleanup(func() { tr.End() })
	require.Error(t, tr.TrackOperations(2))
	require.NoError(t, m.Register("tool", tr))
	assert.Empty(t, pollKinds(t, m))
	require.Error(t, tr.TrackOperations(2))
	assert.Equal(t, []string{"tool/operations/limit_exceeded"}, pollKinds(t, m))
}

func TestMonitorRefusalCounterReset(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{})
	src := newFake(Reading{Resource: Memory, Refusals: 5})
	require.NoError(t, m.Register("svc", src))
	src.set(Memory, 0, 0, 1) // the source reset its counter: new baseline
	assert.Empty(t, pollKinds(t, m))
	src.set(Memory, 0, 0, 2)
	assert.Equal(t, []string{"svc/memory/limit_exceeded"}, pollKinds(t, m))
}

func TestMonitorDroppedEvents(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{EventBuffer: 1, HistorySize: 1})
	for i := range 3 {
		require.NoError(t, m.Register(fmt.Sprint("svc", i), newFake(Reading{Resource: Memory, Used: 9, Limit: 10})))
	}
	m.Poll() // must not block although only one event fits
	evs := drain(t, m)
	require.Len(t, evs, 1)
	assert.Equal(t, "svc0", evs[0].Component)

	st := m.Stats()
	assert.Equal(t, int64(2), st.DroppedEvents)
	assert.Equal(t, int64(3), st.Warnings, "counters are not capped by the channel or the history")
	h := m.History()
	require.Len(t, h, 1)
	assert.Equal(t, "svc2", h[0].Component)
}

func TestMonitorHistoryRing(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{HistorySize: 3})
	src := newFake(Reading{Resource: Memory, Used: 0, Limit: 100})
	require.NoError(t, m.Register("svc", src))
	for _, u := range []int64{90, 10, 90, 10, 90} { // 5 events
		src.set(Memory, u, 100, 0)
		m.Poll()
	}
	h := m.History()
	assert.Equal(t, []string{"svc/memory/high_usage", "svc/memory/recovered", "svc/memory/high_usage"}, kinds(h))
	assert.Equal(t, []int64{90, 10, 90}, []int64{h[0].Used, h[1].Used, h[2].Used})
	h[0].Component = "changed" // a copy
	assert.Equal(t, "svc", m.History()[0].Component)

	m.ClearHistory()
	assert.Empty(t, m.History())
	assert.Equal(t, int64(3), m.Stats().Warnings)
	src.set(Memory, 10, 100, 0)
	m.Poll()
	assert.Equal(t, []string{"svc/memory/recovered"}, kinds(m.History()))

	one := newTestMonitor(t, MonitorConfig{HistorySize: 1})
	require.NoError(t, one.Register("svc", newFake(Reading{Resource: Memory, Used: 90, Limit: 100})))
	one.Poll()
	assert.Len(t, one.History(), 1)
	assert.Len(t, drain(t, one), 1)
}

func TestMonitorRegisterValidation(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{})
	require.ErrorIs(t, m.Register("", newFake()), ErrInvalidArgument)
	require.ErrorIs(t, m.Register("x", nil), ErrInvalidArgument)
	require.ErrorIs(t, m.Register("x", (*Tracker)(nil)), ErrInvalidArgument)
	require.ErrorIs(t, m.Register("x", (*Account)(nil)), ErrInvalidArgument)
	assert.Equal(t, 0, m.Stats().Components)
	m.Unregister("missing") // no-op
}

func TestMonitorReplaceAndUnregister(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{})
	a := newFake(Reading{Resource: Memory, Used: 90, Limit: 100})
	require.NoError(t, m.Register("a", a))
	require.NoError(t, m.Register("b", newFake(Reading{Resource: Memory, Used: 1, Limit: 100})))
	assert.Equal(t, []string{"a/memory/high_usage"}, pollKinds(t, m))
	assert.Empty(t, pollKinds(t, m))

	// Replacing resets the edge state and keeps the polling order.
	a2 := newFake(Reading{Resource: Memory, Used: 95, Limit: 100})
	b2 := newFake(Reading{Resource: Memory, Used: 95, Limit: 100})
	require.NoError(t, m.Register("a", a2))
	require.NoError(t, m.Register("b", b2))
	assert.Equal(t, []string{"a/memory/high_usage", "b/memory/high_usage"}, pollKinds(t, m))
	a.set(Memory, 100, 100, 7) // the replaced source is no longer polled
	assert.Empty(t, pollKinds(t, m))
	assert.Equal(t, 2, m.Stats().Components)

	// Unregistering forgets the state: registering again fires again.
	m.Unregister("a")
	assert.Equal(t, 1, m.Stats().Components)
	a2.set(Memory, 100, 100, 0)
	assert.Empty(t, pollKinds(t, m))
	require.NoError(t, m.Register("a", a2))
	assert.Equal(t, []string{"a/memory/high_usage"}, pollKinds(t, m))
	st := m.Stats()
	assert.Equal(t, int64(1), st.PerComponent["a"].Warnings, "per-component counters restart with a new registration")
}

func TestMonitorStatistics(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{})
	acct, err := NewAccount("acme", AccountLimits{})
	require.NoError(t, err)
	run, err := acct.Begin(Limits{MaxMemoryBytes: 1000})
	require.NoError(t, err)
	t.Cleanup(func() { run.End() })
	tool, err := NewTracker(Limits{})
	require.NoError(t, err)
	t.Cleanup(func() { tool.End() })

	require.NoError(t, m.Register("tenant/acme", acct))
	require.NoError(t, m.Register("tool", tool))

	require.NoError(t, run.TrackMemory(300))
	require.NoError(t, run.TrackOperations(4))
	require.NoError(t, tool.TrackMemory(20))
	require.NoError(t, tool.TrackOperations(6))
	g, err := tool.TryAcquireSlot()
	require.NoError(t, err)
	defer g.Release()

	st := m.Stats()
	assert.Equal(t, 2, st.Components)
	assert.Equal(t, int64(320), st.TotalMemoryBytes)
	assert.Equal(t, int64(10), st.TotalOperations)
	assert.Equal(t, int64(2), st.ConcurrentOperations) // one live run of acme + one slot of tool
	require.Contains(t, st.PerComponent, "tool")
	assert.Equal(t, int64(20), st.PerComponent["tool"].MemoryBytes)
	assert.Equal(t, int64(6), st.PerComponent["tool"].Operations)
	assert.Equal(t, int64(1), st.PerComponent["tool"].Concurrent)
	assert.NotEmpty(t, st.PerComponent["tool"].Readings)
	assert.Equal(t, int64(300), st.PerComponent["tenant/acme"].MemoryBytes)
}

func TestMonitorStartTwiceAndStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, err := NewMonitor(MonitorConfig{})
		require.NoError(t, err)
		require.NoError(t, m.Start(t.Context()))
		require.ErrorIs(t, m.Start(t.Context()), errMonitorStarted)

		m.Stop()
		_, ok := <-m.Events()
		assert.False(t, ok, "Stop closes the events channel")
		m.Stop() // idempotent
		require.ErrorIs(t, m.Start(t.Context()), ErrClosed)
		require.ErrorIs(t, m.Register("x", newFake()), ErrClosed)
		m.Poll() // a no-op, must not panic on the closed channel
	})
}

func TestMonitorStopWithoutStart(t *testing.T) {
	m, err := NewMonitor(MonitorConfig{})
	require.NoError(t, err)
	var nilCtx context.Context
	require.ErrorIs(t, m.Start(nilCtx), ErrInvalidArgument)
	m.Stop()
	_, ok := <-m.Events()
	assert.False(t, ok)
	require.ErrorIs(t, m.Start(context.Background()), ErrClosed)
}

func TestMonitorConcurrentStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, err := NewMonitor(MonitorConfig{CheckInterval: time.Millisecond})
		require.NoError(t, err)
		require.NoError(t, m.Start(t.Context()))
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(m.Stop)
		}
		wg.Wait()
		_, ok := <-m.Events()
		assert.False(t, ok)
	})
}

func TestMonitorPollsEveryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, err := NewMonitor(MonitorConfig{CheckInterval: time.Second})
		require.NoError(t, err)
		src := newFake(Reading{Resource: Memory, Used: 0, Limit: 100})
		require.NoError(t, m.Register("svc", src))
		start := time.Now()
		require.NoError(t, m.Start(t.Context()))
		synctest.Wait()
		assert.Equal(t, int64(1), m.Stats().Polls, "the first poll happens at once")

		src.set(Memory, 85, 100, 0)
		time.Sleep(999 * time.Millisecond) // the fake clock, just short of the next tick
		synctest.Wait()
		assert.Empty(t, drain(t, m), "no poll before the interval")

		time.Sleep(time.Millisecond) // the fake clock reaches the tick
		synctest.Wait()
		evs := drain(t, m)
		require.Len(t, evs, 1)
		assert.Equal(t, HighUsage, evs[0].Kind)
		assert.Equal(t, start.Add(time.Second), evs[0].Time)

		time.Sleep(10 * time.Second) // ten more ticks of the fake clock
		synctest.Wait()
		assert.Empty(t, drain(t, m), "once per crossing, not every tick")
		assert.Equal(t, int64(12), m.Stats().Polls)

		src.set(Memory, 10, 100, 0)
		time.Sleep(time.Second) // one more tick of the fake clock
		synctest.Wait()
		assert.Equal(t, []string{"svc/memory/recovered"}, kinds(drain(t, m)))

		m.Stop()
		_, ok := <-m.Events()
		assert.False(t, ok)
	})
}

func TestMonitorContextCancelStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, err := NewMonitor(MonitorConfig{CheckInterval: time.Second})
		require.NoError(t, err)
		src := newFake(Reading{Resource: Memory, Used: 90, Limit: 100})
		require.NoError(t, m.Register("svc", src))
		ctx, cancel := context.WithCancel(t.Context())
		require.NoError(t, m.Start(ctx))
		synctest.Wait() // the first poll is done

		cancel()
		// The goroutine exits and closes the channel without Stop; ranging
		// over the events ends.
		var got []Event
		for ev := range m.Events() {
			got = append(got, ev)
		}
		synctest.Wait()
		polls := m.Stats().Polls
		time.Sleep(5 * time.Second) // five ticks of the fake clock, had the monitor still run
		synctest.Wait()
		assert.Equal(t, polls, m.Stats().Polls, "no poll after the context ended")
		require.ErrorIs(t, m.Start(t.Context()), ErrClosed)
		m.Stop() // still fine
		assert.Equal(t, []string{"svc/memory/high_usage"}, kinds(got), "events sent before the end stay readable")
	})
}

// blockingSource, once armed, blocks AppendReadings until released, to
// hold a poll in progress.
type blockingSource struct {
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (b *blockingSource) AppendReadings(dst []Reading) []Reading {
	if b.armed.Load() {
		b.entered <- struct{}{}
		<-b.release
	}
	return append(dst, Reading{Resource: Memory, Used: 99, Limit: 100})
}

func TestMonitorRegistryChangesDoNotWaitForPoll(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{})
	blk := &blockingSource{entered: make(chan struct{}), release: make(chan struct{})}
	victim := newFake(Reading{Resource: Memory, Used: 99, Limit: 100})
	require.NoError(t, m.Register("blocker", blk))
	require.NoError(t, m.Register("victim", victim))
	blk.armed.Store(true)

	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Poll()
	}()
	<-blk.entered // the poll is in progress, inside the blocking source

	// These complete while the poll is blocked: they never wait for it.
	m.Unregister("victim")
	require.NoError(t, m.Register("late", newFake(Reading{Resource: Memory, Used: 99, Limit: 100})))
	assert.Equal(t, 2, len(m.reg.Load().comps))

	close(blk.release)
	<-done
	assert.Equal(t, []string{"blocker/memory/high_usage"}, kinds(drain(t, m)), "an unregistered component is skipped by the poll in progress")
}

func TestMonitorConcurrentRegistryDuringPoll(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{EventBuffer: 1})
	tr, err := NewTracker(Limits{MaxOperations: 100, MaxMemoryBytes: 100})
	require.NoError(t, err)
	t.Cleanup(func() { tr.End() })
	require.NoError(t, m.Register("stable", tr))

	var wg sync.WaitGroup
	var changes atomic.Int64
	stop := make(chan struct{})
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				changes.Add(1)
				name := fmt.Sprintf("w%d-%d", w, i%8)
				if i%3 == 2 {
					m.Unregister(name)
				} else {
					assert.NoError(t, m.Register(name, newFake(Reading{Resource: Memory, Used: int64(i % 100), Limit: 100, Refusals: int64(i)})))
				}
			}
		})
	}
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = tr.TrackOperation()
			_ = m.Stats()
			_ = m.History()
			if i%50 == 0 {
				m.ClearHistory()
			}
			drain(t, m)
		}
	})
	// Poll while the registry keeps changing, long enough for many changes
	// to land in the middle of a poll.
	polls := int64(0)
	for polls < 300 || changes.Load() < 5000 {
		m.Poll()
		polls++
	}
	close(stop)
	wg.Wait()
	st := m.Stats()
	assert.Equal(t, polls, st.Polls)
	assert.Contains(t, st.PerComponent, "stable")
}

func TestMonitorProcessBackstop(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{WatchProcess: true, ProcessMemoryLimit: 1 << 20})
	m.Poll()
	evs := drain(t, m)
	require.NotEmpty(t, evs)
	assert.Equal(t, processComponent, evs[0].Component)
	assert.Equal(t, Memory, evs[0].Resource)
	assert.Equal(t, HighUsage, evs[0].Kind)
	assert.Equal(t, int64(1<<20), evs[0].Limit)
	assert.Greater(t, evs[0].Used, int64(1<<20), "the Go runtime holds more than 1 MiB")

	st := m.Stats()
	assert.Equal(t, 1, st.Components)
	require.Contains(t, st.PerComponent, processComponent)
	assert.Positive(t, st.PerComponent[processComponent].MemoryBytes)
	assert.Zero(t, st.TotalMemoryBytes, "the process is not summed with the components")

	m.Unregister(processComponent)
	assert.Zero(t, m.Stats().Components)
}

func TestMonitorProcessBackstopRuntimeLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	src := newProcessSource(0)
	if prev == math.MaxInt64 {
		rs := src.AppendReadings(nil)
		require.Len(t, rs, 1)
		assert.Zero(t, rs[0].Limit, "no limit known: none reported")
		assert.Positive(t, rs[0].Used)
		m := newTestMonitor(t, MonitorConfig{WatchProcess: true})
		assert.Empty(t, pollKinds(t, m), "no events without a limit")
	}
	// A generous limit, so the GC is not affected.
	const big = 1 << 40
	debug.SetMemoryLimit(big)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	rs := src.AppendReadings(nil)
	require.Len(t, rs, 1)
	assert.Equal(t, int64(big), rs[0].Limit)
}

func TestMonitorLogger(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	m := newTestMonitor(t, MonitorConfig{Logger: logger})
	src := newFake(Reading{Resource: CPUTime, Used: int64(900 * time.Millisecond), Limit: int64(time.Second)})
	require.NoError(t, m.Register("svc", src))
	m.Poll()

	var rec map[string]any
	require.NoError(t, json.Unmarshal(buf.Bytes(), &rec))
	assert.Equal(t, "WARN", rec["level"])
	assert.Equal(t, "reslimit monitor: high_usage", rec["msg"])
	assert.Equal(t, "svc", rec["component"])
	assert.Equal(t, "cpu_time", rec["resource"])
	assert.EqualValues(t, 900*time.Millisecond, rec["used"])
	assert.InDelta(t, 0.9, rec["ratio"], 1e-9)

	// Disabled levels are not formatted.
	quiet := newTestMonitor(t, MonitorConfig{Logger: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError}))})
	require.NoError(t, quiet.Register("svc", newFake(Reading{Resource: Memory, Used: 9, Limit: 10})))
	buf.Reset()
	quiet.Poll()
	assert.Empty(t, buf.String())
	assert.Len(t, drain(t, quiet), 1)
}

func TestEventLogValue(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		},
	}))
	ev := Event{
		Time: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), Component: "tenant/acme", Resource: Operations,
		Kind: LimitExceeded, Used: 10, Limit: 10, Ratio: 1, Refusals: 3,
	}
	logger.Info("monitor", "event", ev)
	assert.Equal(t, "level=INFO msg=monitor event.time=2025-01-02T03:04:05.000Z event.component=tenant/acme "+
		"event.resource=operations event.kind=limit_exceeded event.used=10 event.limit=10 event.ratio=1 event.refusals=3\n", buf.String())

	buf.Reset()
	logger.Info("monitor", "event", Event{Resource: Timeout, Kind: HighUsage, Used: int64(time.Second), Limit: int64(2 * time.Second), Ratio: 0.5})
	assert.Contains(t, buf.String(), "event.used=1s event.limit=2s")
	assert.NotContains(t, buf.String(), "refusals")
}

func TestMonitorPollZeroAllocs(t *testing.T) {
	m := newTestMonitor(t, MonitorConfig{})
	acct, err := NewAccount("acme", AccountLimits{MaxTotalOperations: 1000})
	require.NoError(t, err)
	require.NoError(t, m.Register("tenant/acme", acct))
	for i := range 100 {
		tr, err := NewTracker(Limits{MaxOperations: 1000, MaxMemoryBytes: 1000})
		require.NoError(t, err)
		t.Cleanup(func() { tr.End() })
		require.NoError(t, tr.TrackOperations(int64(i)))
		require.NoError(t, m.Register(fmt.Sprint("tool", i), tr))
	}
	m.Poll() // warm up the reading buffer
	allocs := testing.AllocsPerRun(100, m.Poll)
	assert.Zero(t, allocs)
	assert.Empty(t, drain(t, m))
}

// A ledger registered once is watched for every tenant, present and
// future, each as its own component; removed tenants are forgotten, and
// refusals counted before watching began fire nothing.
func TestMonitorWatchesEveryTenantOfALedger(t *testing.T) {
	ledger := mustLedger(t, AccountLimits{MaxEvaluations: 1})
	old := ledger.Account("old")
	run, err := old.Begin(Unlimited())
	require.NoError(t, err)
	run.End()
	_, err = old.Begin(Unlimited())
	require.Error(t, err) // a refusal before the monitor watched

	m := newTestMonitor(t, MonitorConfig{})
	require.Error(t, m.RegisterLedger("tenant/", nil))
	require.NoError(t, m.RegisterLedger("tenant/", ledger))
	assert.Equal(t, []string{"tenant/old/evaluations/high_usage"}, pollKinds(t, m))

	// A tenant that appears later is watched too, from its first refusal.
	acme := ledger.Account("acme")
	run, err = acme.Begin(Unlimited())
	require.NoError(t, err)
	run.End()
	_, err = acme.Begin(Unlimited())
	require.Error(t, err)
	assert.Equal(t, []string{"tenant/acme/evaluations/high_usage", "tenant/acme/evaluations/limit_exceeded"}, pollKinds(t, m))

	st := m.Stats()
	assert.Equal(t, 2, st.Components)
	assert.Equal(t, int64(1), st.PerComponent["tenant/acme"].LimitsExceeded)

	ledger.Remove("old")
	m.Poll()
	assert.NotContains(t, m.Stats().PerComponent, "tenant/old")

	m.Unregister("tenant/")
	assert.Equal(t, 0, m.Stats().Components)
	ledger.Account("late")
	assert.Empty(t, pollKinds(t, m))
}

// The zero Monitor is a monitor with the default configuration, as
// NewMonitor(MonitorConfig{}) returns: it registers, polls, sends events
// and stops.
func TestZeroMonitorIsUsable(t *testing.T) {
	var m Monitor
	assert.Equal(t, defaultEventBuffer, cap(m.Events()))
	require.NoError(t, m.Register("svc", newFake(Reading{Resource: Memory, Used: 90, Limit: 100})))
	m.Poll()
	assert.Equal(t, []string{"svc/memory/high_usage"}, kinds(drain(t, &m)))
	assert.Equal(t, 1, m.Stats().Components)
	require.NoError(t, m.Start(context.Background()))
	m.Stop()
	_, open := <-m.Events()
	assert.False(t, open)
}
