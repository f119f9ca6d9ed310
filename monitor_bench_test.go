package reslimit

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// Benchmarks for the Monitor's speed target: one Poll over 10,000
// registered sources with no crossing costs at most ~20 atomic adds per
// source and allocates nothing. "atomic-add" is the floor measured in the
// same run; the poll benchmarks also report their cost per source in ns and
// in units of that floor ("adds/source").

var monitorBenchSink int64

const monitorBenchSources = 10_000

// monitorBenchAddNs measures one uncontended atomic.Int64.Add, in ns.
func monitorBenchAddNs() float64 {
	const n = 1 << 24
	var c atomic.Int64
	start := time.Now()
	for range n {
		c.Add(1)
	}
	el := time.Since(start)
	monitorBenchSink = c.Load()
	return float64(el.Nanoseconds()) / n
}

func benchmarkPoll(b *testing.B, m *Monitor) {
	m.Poll() // warm up: grows the reading buffer once
	addNs := monitorBenchAddNs()
	polls := 0
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := benchProcessCPU()
	for b.Loop() {
		m.Poll()
		polls++
	}
	cpu := benchProcessCPU() - cpu0
	b.StopTimer()
	perSource := float64(b.Elapsed().Nanoseconds()) / float64(polls) / monitorBenchSources
	b.ReportMetric(perSource, "ns/source")
	if cpu0 >= 0 {
		// The process's CPU time per source: on a machine shared with
		// other work, what the poll cost without the time it waited for
		// a core (it includes the runtime's background work, if any).
		b.ReportMetric(float64(cpu)/float64(polls)/monitorBenchSources, "cpu-ns/source")
	}
	b.ReportMetric(perSource/addNs, "adds/source")
	if st := m.Stats(); st.Warnings+st.LimitsExceeded+st.Recoveries != 0 {
		b.Fatalf("a benchmark source crossed a threshold: %+v", st)
	}
}

func newBenchMonitor(b *testing.B) *Monitor {
	b.Helper()
	m, err := NewMonitor(MonitorConfig{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(m.Stop)
	return m
}

// BenchmarkMonitorPoll measures one synchronous Poll over 10,000
// registered sources (every resource limited, usage well below the warning
// threshold, so no event is due) next to a raw atomic.Int64.Add.
func BenchmarkMonitorPoll(b *testing.B) {
	b.Run("atomic-add", func(b *testing.B) {
		var c atomic.Int64
		b.ReportAllocs()
		for b.Loop() {
			c.Add(1)
		}
		monitorBenchSink = c.Load()
	})
	b.Run("trackers-10000", func(b *testing.B) {
		m := newBenchMonitor(b)
		l := Limits{MaxMemoryBytes: 1 << 30, MaxCPUTime: time.Hour, MaxFileSize: 1 << 30,
			MaxOperations: 1 << 40, MaxConcurrent: 1 << 20}
		for i := range monitorBenchSources {
			tr, err := NewTracker(l)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { tr.End() })
			if err := tr.TrackOperations(int64(i)); err != nil {
				b.Fatal(err)
			}
			if err := tr.TrackMemory(int64(i)); err != nil {
				b.Fatal(err)
			}
			if err := m.Register(fmt.Sprint("tool/", i), tr); err != nil {
				b.Fatal(err)
			}
		}
		benchmarkPoll(b, m)
	})
	// The trackers' side of the poll alone: AppendReadings of 10,000
	// trackers into one buffer, without the Monitor's edge states.
	b.Run("trackers-10000-readings-only", benchmarkReadingsOnly)
	b.Run("accounts-10000", func(b *testing.B) {
		m := newBenchMonitor(b)
		al := AccountLimits{MaxMemory: 1 << 30, MaxTotalMemory: 1 << 40, MaxTotalOperations: 1 << 40,
			MaxCalls: 1 << 40, MaxCPUTime: time.Hour, MaxEvaluations: 1 << 40, MaxConcurrent: 1 << 20}
		for i := range monitorBenchSources {
			a, err := NewAccount(fmt.Sprint("tenant", i), al, WithHistorySize(0))
			if err != nil {
				b.Fatal(err)
			}
			if err := m.Register("tenant/"+a.Name(), a); err != nil {
				b.Fatal(err)
			}
		}
		benchmarkPoll(b, m)
	})
}

// benchmarkReadingsOnly reads 10,000 trackers with AppendReadings into one
// buffer: the trackers' side of a poll.
func benchmarkReadingsOnly(b *testing.B) {
	l := Limits{MaxMemoryBytes: 1 << 30, MaxCPUTime: time.Hour, MaxFileSize: 1 << 30,
		MaxOperations: 1 << 40, MaxConcurrent: 1 << 20}
	trs := make([]*Tracker, monitorBenchSources)
	for i := range trs {
		tr, err := NewTracker(l)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { tr.End() })
		if err := tr.TrackMemory(int64(i + 1)); err != nil {
			b.Fatal(err)
		}
		trs[i] = tr
	}
	buf := make([]Reading, 0, 16)
	b.ReportAllocs()
	cpu0 := benchProcessCPU()
	passes := 0
	for b.Loop() {
		for _, tr := range trs {
			buf = tr.AppendReadings(buf[:0])
		}
		passes++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(passes)/monitorBenchSources, "ns/source")
	if cpu0 >= 0 {
		b.ReportMetric(float64(benchProcessCPU()-cpu0)/float64(passes)/monitorBenchSources, "cpu-ns/source")
	}
}
