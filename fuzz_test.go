package reslimit

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// model is the obvious mutex-style implementation of one run charged to
// one account, which the lock-free Tracker must agree with step by step.
type model struct {
	l                       Limits
	al                      AccountLimits
	ops, calls, total, held int64
	peak, slotsHeld         int64
	acctOps, acctTotal      int64 // cumulative at the account (one run)
}

func FuzzTrackerAgainstModel(f *testing.F) {
	f.Add([]byte{0, 5, 1, 3, 2, 1, 3, 4, 4, 0, 5, 2}, uint8(10), uint8(50), uint8(2), uint8(30))
	f.Add([]byte{1, 200, 1, 200, 2, 250, 6, 0, 6, 0, 7, 0}, uint8(0), uint8(100), uint8(1), uint8(0))
	f.Add([]byte{3, 20, 3, 30, 1, 5, 4, 0, 2, 5, 3, 40, 2, 30, 4, 0, 5, 0, 4, 0}, uint8(10), uint8(60), uint8(6), uint8(0))
	// A guard whose bytes were partly given back with ReleaseMemory: its
	// Release must panic, not take the bytes held below zero.
	f.Add([]byte{3, 5, 2, 1, 4, 0}, uint8(0), uint8(0), uint8(4), uint8(0))
	f.Add([]byte{3, 5, 2, 1, 4, 0}, uint8(0), uint8(0), uint8(0), uint8(0))
	f.Fuzz(func(t *testing.T, prog []byte, maxOps, maxMem, maxConc, acctOps uint8) {
		r := newFuzzRun(t, maxOps, maxMem, maxConc, acctOps)
		for i := 0; i+1 < len(prog); i += 2 {
			if r.step(prog[i]%8, int64(prog[i+1])) {
				r.check(i / 2)
			}
		}
		r.end()
	})
}

// fuzzRun is one fuzzed run: the Tracker under test, the account it is
// charged to, the guards it holds, and the model it must agree with.
type fuzzRun struct {
	t          *testing.T
	m          model
	detached   bool // a tracker with no account, whose guards take the fast paths
	acct       *Account
	tr         *Tracker
	guards     []Guard
	slotGuards []Guard
}

// newFuzzRun begins the run the fuzzer's limits describe. Bit 2 of maxConc
// runs a detached tracker (no account).
func newFuzzRun(t *testing.T, maxOps, maxMem, maxConc, acctOps uint8) *fuzzRun {
	r := &fuzzRun{t: t, detached: maxConc&4 != 0}
	r.m = model{
		l:  Limits{MaxOperations: int64(maxOps), MaxMemoryBytes: int64(maxMem), MaxConcurrent: int64(maxConc % 4), MaxFileSize: 100},
		al: AccountLimits{MaxTotalOperations: int64(acctOps), MaxTotalMemory: 3 * int64(maxMem)},
	}
	if r.detached {
		r.m.al = AccountLimits{}
	}
	var err error
	r.acct, err = NewAccount("fuzz", r.m.al)
	if err != nil {
		t.Fatal(err)
	}
	if r.detached {
		r.tr, err = NewTracker(r.m.l)
	} else {
		r.tr, err = r.acct.Begin(r.m.l)
	}
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// refused fails the test unless err is a refusal exactly when the model
// wants one, and of a kind a refusal may be.
func (r *fuzzRun) refused(err error, want bool, what string) {
	r.t.Helper()
	if want != (err != nil) {
		r.t.Fatalf("%s: err = %v, model expects refusal = %v", what, err, want)
	}
	if err != nil && !errors.Is(err, ErrLimitExceeded) && !errors.Is(err, ErrInvalidArgument) {
		r.t.Fatalf("%s: unexpected error kind %v", what, err)
	}
}

// modelOver reports whether n more on top of used passes lim (0: no limit).
func modelOver(used, n, lim int64) bool { return lim > 0 && used+n > lim }

// step runs one operation of the program on the tracker and the model; it
// reports false for an operation skipped (nothing to do), after which
// nothing need be checked.
func (r *fuzzRun) step(op byte, n int64) bool {
	switch op {
	case 0:
		r.trackOperations(n)
	case 1:
		return r.trackMemory(n)
	case 2:
		return r.releaseMemory(n)
	case 3:
		return r.acquireMemory(n)
	case 4:
		return r.releaseGuard()
	case 5:
		r.tryAcquireSlot()
	case 6:
		return r.releaseSlot()
	case 7:
		r.checkFileSizeAndCall(n)
	}
	return true
}

func (r *fuzzRun) trackOperations(n int64) {
	m := &r.m
	bad := modelOver(m.ops, n, m.l.MaxOperations) || modelOver(m.acctOps, n, m.al.MaxTotalOperations)
	r.refused(r.tr.TrackOperations(n), bad, "TrackOperations")
	if !bad {
		m.ops += n
		m.acctOps += n
	}
}

// hold adds n bytes held (by TrackMemory or a guard) to the model.
func (m *model) hold(n int64) {
	m.held += n
	m.total += n
	m.acctTotal += n
	m.peak = max(m.peak, m.held)
}

// memoryRefused reports whether the model refuses n more bytes held.
func (m *model) memoryRefused(n int64) bool {
	return modelOver(m.held, n, m.l.MaxMemoryBytes) || modelOver(m.acctTotal, n, m.al.MaxTotalMemory)
}

func (r *fuzzRun) trackMemory(n int64) bool {
	if n == 0 {
		return false
	}
	bad := r.m.memoryRefused(n)
	r.refused(r.tr.TrackMemory(n), bad, "TrackMemory")
	if !bad {
		r.m.hold(n)
	}
	return true
}

func (r *fuzzRun) releaseMemory(n int64) bool {
	if n == 0 {
		return false
	}
	bad := n > r.m.held
	err := r.tr.ReleaseMemory(n)
	r.refused(err, bad, "ReleaseMemory")
	if bad && !errors.Is(err, ErrInvalidArgument) {
		r.t.Fatalf("over-release error %v", err)
	}
	if !bad {
		r.m.held -= n
	}
	return true
}

func (r *fuzzRun) acquireMemory(n int64) bool {
	if n == 0 {
		return false
	}
	bad := r.m.memoryRefused(n)
	g, err := r.tr.AcquireMemory(n)
	r.refused(err, bad, "AcquireMemory")
	if !bad {
		r.guards = append(r.guards, g)
		r.m.hold(n)
	}
	return true
}

// releaseGuard releases the newest memory guard, twice (Release is
// idempotent). A guard whose bytes were given back with ReleaseMemory must
// panic rather than take the bytes held below zero.
func (r *fuzzRun) releaseGuard() bool {
	if len(r.guards) == 0 {
		return false
	}
	g := &r.guards[len(r.guards)-1]
	if g.n > r.m.held {
		func() {
			defer func() {
				if p := recover(); p == nil {
					r.t.Fatal("over-releasing guard did not panic")
				}
			}()
			g.Release()
		}()
	} else {
		r.m.held -= g.n
		g.Release()
	}
	g.Release()
	r.guards = r.guards[:len(r.guards)-1]
	return true
}

func (r *fuzzRun) tryAcquireSlot() {
	bad := modelOver(r.m.slotsHeld, 1, r.m.l.MaxConcurrent)
	g, err := r.tr.TryAcquireSlot()
	r.refused(err, bad, "TryAcquireSlot")
	if !bad {
		r.slotGuards = append(r.slotGuards, g)
		r.m.slotsHeld++
	}
}

// releaseSlot releases the oldest slot held.
func (r *fuzzRun) releaseSlot() bool {
	if len(r.slotGuards) == 0 {
		return false
	}
	r.slotGuards[0].Release()
	r.slotGuards = r.slotGuards[1:]
	r.m.slotsHeld--
	return true
}

func (r *fuzzRun) checkFileSizeAndCall(n int64) {
	r.refused(r.tr.CheckFileSize(n), n > 100, "CheckFileSize")
	r.refused(r.tr.TrackCall(), false, "TrackCall")
	r.m.calls++
}

// check compares the tracker's usage, and the account's stats, with the
// model after step i.
func (r *fuzzRun) check(i int) {
	m := &r.m
	u := r.tr.Usage()
	if u.Operations != m.ops || u.MemoryBytes != m.held || u.TotalMemoryBytes != m.total ||
		u.PeakMemoryBytes != m.peak || u.Concurrent != m.slotsHeld || u.Calls != m.calls {
		r.t.Fatalf("step %d: usage %+v, model %+v", i, u, *m)
	}
	if s := r.acct.Stats(); !r.detached && (s.Operations != m.ops || s.MemoryBytes != m.held || s.TotalMemoryBytes != m.acctTotal) {
		r.t.Fatalf("step %d: account %+v, model %+v", i, s, *m)
	}
}

// end releases the slots, ends the run and checks what End and the account
// say against the model.
func (r *fuzzRun) end() {
	for i := range r.slotGuards {
		r.slotGuards[i].Release()
	}
	end := r.tr.End()
	if end.Operations != r.m.ops {
		r.t.Fatalf("End: %+v, model %+v", end, r.m)
	}
	if r.detached {
		r.endDetached(end)
		return
	}
	s := r.acct.Stats()
	if s.MemoryBytes != 0 || s.Operations != r.m.ops || s.TotalMemoryBytes != r.m.total {
		r.t.Fatalf("after End: account %+v, model %+v", s, r.m)
	}
	r.acct.mu.Lock()
	defer r.acct.mu.Unlock()
	for i, res := range meterResource {
		if r.acct.limits[res].Load() > 0 && r.acct.mu.reserved[i] != r.acct.mu.committed[i] {
			r.t.Errorf("%s: reservations left behind: reserved %d committed %d", res, r.acct.mu.reserved[i], r.acct.mu.committed[i])
		}
	}
}

// endDetached checks a detached run after End: its memory totals, and that
// releasing its guards afterwards changes nothing.
func (r *fuzzRun) endDetached(end Usage) {
	if end.MemoryBytes != r.m.held || end.TotalMemoryBytes != r.m.total {
		r.t.Fatalf("End: %+v, model %+v", end, r.m)
	}
	for i := range r.guards {
		r.guards[i].Release()
	}
	if u := r.tr.Usage(); u != end {
		r.t.Fatalf("usage changed after End: %+v, was %+v", u, end)
	}
}

// FuzzLimitedStreams checks that a limited reader and writer pass exactly
// the bytes up to MaxFileSize and fail exactly when the stream is longer.
func FuzzLimitedStreams(f *testing.F) {
	f.Add([]byte("hello, world"), uint8(5), uint8(3))
	f.Add([]byte("abc"), uint8(3), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, limit, chunk uint8) {
		if limit == 0 || chunk == 0 {
			return
		}
		tr, err := NewTracker(Limits{MaxFileSize: int64(limit)})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.End()
		want := data
		if len(want) > int(limit) {
			want = want[:limit]
		}
		tooBig := len(data) > int(limit)

		var out bytes.Buffer
		w := tr.LimitWriter(&out)
		var werr error
		for off := 0; off < len(data) && werr == nil; off += int(chunk) {
			end := min(off+int(chunk), len(data))
			_, werr = w.Write(data[off:end])
		}
		if tooBig != (werr != nil) || (werr != nil && !errors.Is(werr, ErrLimitExceeded)) {
			t.Fatalf("writer: err %v for %d bytes under limit %d", werr, len(data), limit)
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("writer wrote %q, want %q", out.Bytes(), want)
		}

		r := tr.LimitReader(iotest.HalfReader(bytes.NewReader(data)))
		got, rerr := io.ReadAll(r)
		if tooBig != (rerr != nil) || (rerr != nil && !errors.Is(rerr, ErrLimitExceeded)) {
			t.Fatalf("reader: err %v for %d bytes under limit %d", rerr, len(data), limit)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("reader read %q, want %q", got, want)
		}
	})
}
