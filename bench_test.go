package reslimit

// Benchmarks for the speed targets of the core (tracker, guards, Limit) and
// of attribution (Account, Ledger). BENCHMARKS.md has the command, the
// machine and the medians. Each group measures the floor or the competing
// implementation side by side with reslimit in the same run, serially and
// with b.RunParallel (GOMAXPROCS goroutines).
//
// The comparisons with failsafe-go live in the separate bench/ module so
// that the core go.mod does not depend on it.

import (
	"context"
	"fmt"
	"math"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/reslimit/reslimit/internal/threadcpu"
)

// benchHuge is a limit that a benchmark never reaches, so that the limit is
// checked on every request but never refuses.
const benchHuge = math.MaxInt64 / 2

// benchPadded is an atomic counter alone on its cache lines (128 bytes, so
// that the adjacent-line prefetcher does not pair two of them either).
type benchPadded struct {
	_ [64]byte
	atomic.Int64
	_ [56]byte
}

var benchSinkInt int64

func benchTracker(b *testing.B, l Limits) *Tracker {
	b.Helper()
	tr, err := NewTracker(l)
	if err != nil {
		b.Fatal(err)
	}
	return tr
}

// BenchmarkOp compares counting one operation: the floor (one
// atomic.Int64.Add) with TrackOperation (no limit, and a limit never
// reached), each called directly in a plain `for i < b.N` loop,
// the way users' loops run (b.Loop adds a few ns to the floor and would
// flatter the ratio). In parallel, "shared" has every goroutine count on
// one counter (or one tracker), "own" gives each goroutine its own padded
// counter (or its own tracker).
func BenchmarkOp(b *testing.B) {
	b.Run("atomic/serial", benchAtomicSerial)
	b.Run("atomic/parallel-shared", benchAtomicParallelShared)
	b.Run("atomic/parallel-own", benchAtomicParallelOwn)
	variants := []struct {
		name string
		l    Limits
	}{
		{"nolimit", Limits{}},
		{"limit", Limits{MaxOperations: benchHuge, Timeout: time.Hour}},
	}
	for _, v := range variants {
		b.Run("TrackOperation-"+v.name+"/serial", func(b *testing.B) { benchTrackOperationSerial(b, v.l) })
		b.Run("TrackOperation-"+v.name+"/parallel-shared", func(b *testing.B) { benchTrackOperationParallelShared(b, v.l) })
		b.Run("TrackOperation-"+v.name+"/parallel-own", func(b *testing.B) { benchTrackOperationParallelOwn(b, v.l) })
	}
}

func benchAtomicSerial(b *testing.B) {
	b.ReportAllocs()
	var c atomic.Int64
	for i := 0; i < b.N; i++ {
		c.Add(1)
	}
	benchSinkInt = c.Load()
}

func benchAtomicParallelShared(b *testing.B) {
	b.ReportAllocs()
	var c benchPadded
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Add(1)
		}
	})
	benchSinkInt = c.Load()
}

func benchAtomicParallelOwn(b *testing.B) {
	b.ReportAllocs()
	var total atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		c := new(benchPadded)
		for pb.Next() {
			c.Add(1)
		}
		total.Add(c.Load())
	})
	benchSinkInt = total.Load()
}

func benchTrackOperationSerial(b *testing.B, l Limits) {
	b.ReportAllocs()
	tr := benchTracker(b, l)
	defer tr.End()
	for i := 0; i < b.N; i++ {
		if err := tr.TrackOperation(); err != nil {
			b.Fatal(err)
		}
	}
}

func benchTrackOperationParallelShared(b *testing.B, l Limits) {
	b.ReportAllocs()
	tr := benchTracker(b, l)
	defer tr.End()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := tr.TrackOperation(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func benchTrackOperationParallelOwn(b *testing.B, l Limits) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		tr, err := NewTracker(l)
		if err != nil {
			b.Error(err)
			return
		}
		defer tr.End()
		for pb.Next() {
			if err := tr.TrackOperation(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// benchGuardMemN is the bytes each memory guard of BenchmarkGuard holds.
const benchGuardMemN = 64

// guardBenchCase is one variant of BenchmarkGuard: new makes the thing
// acquired (a semaphore, a tracker) and returns one acquire+release of it.
type guardBenchCase struct {
	name string
	new  func(b *testing.B) func() error
}

// BenchmarkGuard compares acquiring and releasing through a Guard with
// golang.org/x/sync/semaphore's TryAcquire(1)+Release(1). Limits are set
// and never reached.
func BenchmarkGuard(b *testing.B) {
	cases := []guardBenchCase{
		{"semaphore", newSemaphoreAcquire},
		{"AcquireMemory", newAcquireMemory},
		// The same charge and release without a Guard: what a guard's
		// identity (its copy-safe release) costs on top is the difference.
		{"TrackMemory+ReleaseMemory", newTrackReleaseMemory},
		// The general path, which the memory fast path skips: a run
		// charged to an account (whose MaxMemory is checked too).
		{"AcquireMemory-account", newAcquireMemoryAccount},
		{"TryAcquireSlot", newTryAcquireSlot},
	}
	for _, c := range cases {
		b.Run(c.name+"/serial", func(b *testing.B) { benchGuardSerial(b, c.new) })
		b.Run(c.name+"/parallel", func(b *testing.B) { benchGuardParallel(b, c.new) })
		// Each goroutine its own semaphore or tracker: no shared line.
		b.Run(c.name+"/parallel-own", func(b *testing.B) { benchGuardParallelOwn(b, c.new) })
	}
}

func newSemaphoreAcquire(b *testing.B) func() error {
	s := semaphore.NewWeighted(benchHuge)
	return func() error {
		if !s.TryAcquire(1) {
			return fmt.Errorf("semaphore full")
		}
		s.Release(1)
		return nil
	}
}

// acquireMemoryOnce returns one AcquireMemory+Release on tr.
func acquireMemoryOnce(tr *Tracker) func() error {
	return func() error {
		g, err := tr.AcquireMemory(benchGuardMemN)
		if err != nil {
			return err
		}
		g.Release()
		return nil
	}
}

func newAcquireMemory(b *testing.B) func() error {
	tr := benchTracker(b, Limits{MaxMemoryBytes: benchHuge})
	b.Cleanup(func() { tr.End() })
	return acquireMemoryOnce(tr)
}

func newTrackReleaseMemory(b *testing.B) func() error {
	tr := benchTracker(b, Limits{MaxMemoryBytes: benchHuge})
	b.Cleanup(func() { tr.End() })
	return func() error {
		if err := tr.TrackMemory(benchGuardMemN); err != nil {
			return err
		}
		return tr.ReleaseMemory(benchGuardMemN)
	}
}

func newAcquireMemoryAccount(b *testing.B) func() error {
	a, err := NewAccount("bench", AccountLimits{MaxMemory: benchHuge})
	if err != nil {
		b.Fatal(err)
	}
	tr, err := a.Begin(Limits{MaxMemoryBytes: benchHuge})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tr.End() })
	return acquireMemoryOnce(tr)
}

func newTryAcquireSlot(b *testing.B) func() error {
	tr := benchTracker(b, Limits{MaxConcurrent: benchHuge})
	b.Cleanup(func() { tr.End() })
	return func() error {
		g, err := tr.TryAcquireSlot()
		if err != nil {
			return err
		}
		g.Release()
		return nil
	}
}

func benchGuardSerial(b *testing.B, newOp func(*testing.B) func() error) {
	b.ReportAllocs()
	f := newOp(b)
	for b.Loop() {
		if err := f(); err != nil {
			b.Fatal(err)
		}
	}
}

func benchGuardParallel(b *testing.B, newOp func(*testing.B) func() error) {
	b.ReportAllocs()
	f := newOp(b)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := f(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func benchGuardParallelOwn(b *testing.B, newOp func(*testing.B) func() error) {
	b.ReportAllocs()
	var mu sync.Mutex
	b.RunParallel(func(pb *testing.PB) {
		mu.Lock()
		f := newOp(b)
		mu.Unlock()
		for pb.Next() {
			if err := f(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkAccountOp compares TrackOperation on runs of one shared Account
// (each goroutine its own run, begun with acct.Begin) with detached trackers
// (each goroutine its own NewTracker), without a limit and with a
// cumulative limit (the account's MaxTotalOperations; for the detached
// tracker, its MaxOperations) that is never reached.
func BenchmarkAccountOp(b *testing.B) {
	cases := []struct {
		name string
		al   *AccountLimits // nil: detached
		l    Limits
	}{
		{"detached-nolimit", nil, Limits{}},
		{"account-nolimit", &AccountLimits{}, Limits{}},
		{"detached-limit", nil, Limits{MaxOperations: benchHuge}},
		{"account-limit", &AccountLimits{MaxTotalOperations: benchHuge}, Limits{}},
	}
	for _, c := range cases {
		begin := func(b *testing.B) func() (*Tracker, error) {
			if c.al == nil {
				return func() (*Tracker, error) { return NewTracker(c.l) }
			}
			acct, err := NewAccount("bench", *c.al)
			if err != nil {
				b.Fatal(err)
			}
			return func() (*Tracker, error) { return acct.Begin(c.l) }
		}
		b.Run(c.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			tr, err := begin(b)()
			if err != nil {
				b.Fatal(err)
			}
			defer tr.End()
			for b.Loop() {
				if err := tr.TrackOperation(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			newRun := begin(b)
			b.RunParallel(func(pb *testing.PB) {
				tr, err := newRun()
				if err != nil {
					b.Error(err)
					return
				}
				defer tr.End()
				for pb.Next() {
					if err := tr.TrackOperation(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// benchLimited is an account with six limits set, none ever reached.
var benchLimited = AccountLimits{
	MaxMemory: 1 << 40, MaxTotalMemory: benchHuge, MaxTotalOperations: benchHuge,
	MaxCalls: benchHuge, MaxCPUTime: time.Duration(benchHuge), MaxEvaluations: benchHuge,
}

// BenchmarkAccount measures Begin+End of a run on one account, Stats, and
// a Ledger Snapshot of 10,000 tenants.
func BenchmarkAccount(b *testing.B) {
	for _, c := range []struct {
		name string
		al   AccountLimits
	}{
		{"nolimit", AccountLimits{}}, {"limit", benchLimited},
		// Rates that never refuse: the cost of the token bucket, taken in
		// batches (burst 1e6) and one token at a time (burst 16).
		{"rate", AccountLimits{EvaluationsPerSecond: 1e9}},
		{"rate-burst16", AccountLimits{EvaluationsPerSecond: 1e12, EvaluationBurst: 16}},
	} {
		b.Run("BeginEnd-"+c.name+"/serial", func(b *testing.B) { benchBeginEndSerial(b, c.al) })
		b.Run("BeginEnd-"+c.name+"/parallel", func(b *testing.B) { benchBeginEndParallel(b, c.al) })
	}
	// The part of Begin that a rate adds, alone (none: the nil check of an
	// account without a rate).
	for _, c := range []struct {
		name string
		al   AccountLimits
	}{
		{"none", AccountLimits{}},
		{"batched", AccountLimits{EvaluationsPerSecond: 1e9}},
		{"burst16", AccountLimits{EvaluationsPerSecond: 1e12, EvaluationBurst: 16}},
	} {
		b.Run("EvaluationToken-"+c.name, func(b *testing.B) { benchEvaluationToken(b, c.al) })
	}
	b.Run("Stats/serial", benchStatsSerial)
	b.Run("Stats/parallel", benchStatsParallel)
	b.Run("LedgerSnapshot-10000", benchLedgerSnapshot)
}

func benchAccount(b *testing.B, al AccountLimits) *Account {
	b.Helper()
	acct, err := NewAccount("bench", al)
	if err != nil {
		b.Fatal(err)
	}
	return acct
}

func benchBeginEndSerial(b *testing.B, al AccountLimits) {
	b.ReportAllocs()
	acct := benchAccount(b, al)
	for b.Loop() {
		tr, err := acct.Begin(Limits{})
		if err != nil {
			b.Fatal(err)
		}
		tr.End()
	}
}

func benchBeginEndParallel(b *testing.B, al AccountLimits) {
	b.ReportAllocs()
	acct := benchAccount(b, al)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tr, err := acct.Begin(Limits{})
			if err != nil {
				b.Error(err)
				return
			}
			tr.End()
		}
	})
}

// benchEvaluationToken takes the evaluation token alone, under the
// account's lock as Begin takes it, at the run's start time, which Begin
// reads anyway (here a clock that moves 1µs per call).
func benchEvaluationToken(b *testing.B, al AccountLimits) {
	b.ReportAllocs()
	acct := benchAccount(b, al)
	now := time.Now()
	for b.Loop() {
		now = now.Add(time.Microsecond)
		acct.mu.Lock()
		if acct.mu.rates.evals != nil {
			if err := acct.takeEvaluationLocked(now); err != nil {
				b.Fatal(err)
			}
		}
		acct.mu.Unlock()
	}
}

// benchStatsAccount returns an account with six limits set and three live
// runs that have counted some operations.
func benchStatsAccount(b *testing.B) *Account {
	acct := benchAccount(b, benchLimited)
	for range 3 {
		tr, err := acct.Begin(Limits{})
		if err != nil {
			b.Fatal(err)
		}
		if err := tr.TrackOperations(1000); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { tr.End() })
	}
	return acct
}

func benchStatsSerial(b *testing.B) {
	b.ReportAllocs()
	acct := benchStatsAccount(b)
	for b.Loop() {
		s := acct.Stats()
		benchSinkInt = s.Operations
	}
}

func benchStatsParallel(b *testing.B) {
	b.ReportAllocs()
	acct := benchStatsAccount(b)
	b.RunParallel(func(pb *testing.PB) {
		var sum int64
		for pb.Next() {
			sum += acct.Stats().Operations
		}
		atomic.AddInt64(&benchSinkInt, sum)
	})
}

func benchLedgerSnapshot(b *testing.B) {
	b.ReportAllocs()
	ledger := mustLedger(b, AccountLimits{MaxTotalOperations: 1_000_000, MaxEvaluations: 100})
	for i := range 10_000 {
		acct := ledger.Account(fmt.Sprintf("tenant-%05d", i))
		tr, err := acct.Begin(Limits{})
		if err != nil {
			b.Fatal(err)
		}
		if err := tr.TrackOperations(int64(i)); err != nil {
			b.Fatal(err)
		}
		tr.End()
	}
	for b.Loop() {
		snap := ledger.Snapshot()
		benchSinkInt = int64(len(snap))
	}
}

// BenchmarkClock measures the clocks a limited call reads: the calling
// thread's CPU clock (a system call on Linux: the vDSO does not serve
// thread CPU clocks) and the wall clock (time.Now, served by the vDSO). It
// explains most of what BenchmarkLimit costs on a machine whose system
// calls are slow.
func BenchmarkClock(b *testing.B) {
	b.Run("threadcpu.Current", func(b *testing.B) {
		b.ReportAllocs()
		var d time.Duration
		for b.Loop() {
			d += threadcpu.Current()
		}
		benchSinkInt = int64(d)
	})
	b.Run("time.Now", func(b *testing.B) {
		b.ReportAllocs()
		var d int64
		for b.Loop() {
			d += time.Now().UnixNano()
		}
		benchSinkInt = d
	})
}

func benchWork(_ context.Context, in int) (int, error) { return in + 1, nil }

func benchStrictNoCPU() Limits {
	l := Strict()
	l.MaxCPUTime = 0
	return l
}

// BenchmarkLimit measures one call of a function wrapped by Limit, with a
// trivial work function, for the policies compared with failsafe-go in the
// bench/ module and for the cost of MaxCPUTime (Strict() against Strict()
// without MaxCPUTime). "direct" is the plain call; "none" is Limit with no
// limit (its per-call tracker and thread CPU clock only).
func BenchmarkLimit(b *testing.B) {
	cases := []struct {
		name string
		l    *Limits // nil: call benchWork directly
	}{
		{"direct", nil},
		{"none", &Limits{}},
		{"MaxConcurrent", &Limits{MaxConcurrent: 100}},
		{"Timeout", &Limits{Timeout: 10 * time.Second}},
		{"MaxConcurrent+Timeout", &Limits{MaxConcurrent: 100, Timeout: 10 * time.Second}},
		{"Strict-noCPU", func() *Limits { l := benchStrictNoCPU(); return &l }()},
		{"Strict", func() *Limits { l := Strict(); return &l }()},
		// What the lazy tracker saves a call that never asks for it: the
		// same call asking for its tracker (made at once).
		{"none-FromContext", &Limits{}},
		{"Timeout-FromContext", &Limits{Timeout: 10 * time.Second}},
	}
	for _, c := range cases {
		f := benchWork
		if strings.HasSuffix(c.name, "-FromContext") {
			f = func(ctx context.Context, i int) (int, error) {
				if err := FromContext(ctx).TrackOperation(); err != nil {
					return 0, err
				}
				return benchWork(ctx, i)
			}
		}
		if c.l != nil {
			f = Limit(f, *c.l)
		}
		b.Run(c.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			ctx := context.Background()
			i := 0
			for b.Loop() {
				out, err := f(ctx, i)
				if err != nil {
					b.Fatal(err)
				}
				i = out
			}
		})
		b.Run(c.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			ctx := context.Background()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					out, err := f(ctx, i)
					if err != nil {
						b.Error(err)
						return
					}
					i = out
				}
			})
		})
	}
}

// benchParallel runs body with b.RunParallel and reports, besides ns/op,
// how many CPUs the process kept busy meanwhile ("CPUs": process CPU time
// over wall time) and how many goroutines were parked on a sync.Mutex on
// average ("parked"). A mutex whose waiters park can leave one of the two
// Ps idle, so that the goroutines take turns on one core instead of
// contending from two: "CPUs" near 1 with "parked" near 1 on an otherwise
// idle machine says the measurement was serial.
func benchParallel(b *testing.B, body func(*testing.PB)) {
	b.ReportAllocs()
	wait := []metrics.Sample{{Name: "/sync/mutex/wait/total:seconds"}}
	metrics.Read(wait)
	w0 := wait[0].Value.Float64()
	c0 := benchProcessCPU()
	b.ResetTimer()
	b.RunParallel(body)
	b.StopTimer()
	if b.Elapsed() <= 0 {
		return
	}
	if c0 >= 0 {
		b.ReportMetric(float64(benchProcessCPU()-c0)/float64(b.Elapsed().Nanoseconds()), "CPUs")
	}
	metrics.Read(wait)
	if wait[0].Value.Kind() == metrics.KindFloat64 {
		b.ReportMetric((wait[0].Value.Float64()-w0)/b.Elapsed().Seconds(), "parked")
	}
}

// BenchmarkGuardShared is the review's measurement of issue 20.8, written
// out without a function value in between: b.RunParallel on one tracker
// with MaxMemoryBytes 1<<40, AcquireMemory(64)+Release, against
// x/sync/semaphore's TryAcquire(1)+Release(1) on one semaphore, in the
// same run.
func BenchmarkGuardShared(b *testing.B) {
	b.Run("semaphore", func(b *testing.B) {
		s := semaphore.NewWeighted(1 << 40)
		benchParallel(b, func(pb *testing.PB) {
			for pb.Next() {
				if !s.TryAcquire(1) {
					b.Error("semaphore full")
					return
				}
				s.Release(1)
			}
		})
	})
	b.Run("AcquireMemory", func(b *testing.B) {
		tr := benchTracker(b, Limits{MaxMemoryBytes: 1 << 40})
		defer tr.End()
		benchParallel(b, func(pb *testing.PB) {
			for pb.Next() {
				g, err := tr.AcquireMemory(64)
				if err != nil {
					b.Error(err)
					return
				}
				g.Release()
			}
		})
	})
}
