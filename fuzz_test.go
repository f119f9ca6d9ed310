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
		// Bit 2 of maxConc runs a detached tracker (no account), whose
		// guards take the fast paths.
		detached := maxConc&4 != 0
		m := model{
			l:  Limits{MaxOperations: int64(maxOps), MaxMemoryBytes: int64(maxMem), MaxConcurrent: int64(maxConc % 4), MaxFileSize: 100},
			al: AccountLimits{MaxTotalOperations: int64(acctOps), MaxTotalMemory: 3 * int64(maxMem)},
		}
		if detached {
			m.al = AccountLimits{}
		}
		acct, err := NewAccount("fuzz", m.al)
		if err != nil {
			t.Fatal(err)
		}
		var tr *Tracker
		if detached {
			tr, err = NewTracker(m.l)
		} else {
			tr, err = acct.Begin(m.l)
		}
		if err != nil {
			t.Fatal(err)
		}
		var guards []Guard
		var slotGuards []Guard
		refused := func(err error, want bool, what string) {
			t.Helper()
			if want != (err != nil) {
				t.Fatalf("%s: err = %v, model expects refusal = %v", what, err, want)
			}
			if err != nil && !errors.Is(err, ErrLimitExceeded) && !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("%s: unexpected error kind %v", what, err)
			}
		}
		over := func(used, n, lim int64) bool { return lim > 0 && used+n > lim }
		for i := 0; i+1 < len(prog); i += 2 {
			op, n := prog[i]%8, int64(prog[i+1])
			switch op {
			case 0: // TrackOperations
				bad := over(m.ops, n, m.l.MaxOperations) || over(m.acctOps, n, m.al.MaxTotalOperations)
				refused(tr.TrackOperations(n), bad, "TrackOperations")
				if !bad {
					m.ops += n
					m.acctOps += n
				}
			case 1: // TrackMemory
				if n == 0 {
					continue
				}
				bad := over(m.held, n, m.l.MaxMemoryBytes) || over(m.acctTotal, n, m.al.MaxTotalMemory)
				refused(tr.TrackMemory(n), bad, "TrackMemory")
				if !bad {
					m.held += n
					m.total += n
					m.acctTotal += n
					m.peak = max(m.peak, m.held)
				}
			case 2: // ReleaseMemory
				if n == 0 {
					continue
				}
				bad := n > m.held
				err := tr.ReleaseMemory(n)
				refused(err, bad, "ReleaseMemory")
				if bad && !errors.Is(err, ErrInvalidArgument) {
					t.Fatalf("over-release error %v", err)
				}
				if !bad {
					m.held -= n
				}
			case 3: // AcquireMemory guard
				if n == 0 {
					continue
				}
				bad := over(m.held, n, m.l.MaxMemoryBytes) || over(m.acctTotal, n, m.al.MaxTotalMemory)
				g, err := tr.AcquireMemory(n)
				refused(err, bad, "AcquireMemory")
				if !bad {
					guards = append(guards, g)
					m.held += n
					m.total += n
					m.acctTotal += n
					m.peak = max(m.peak, m.held)
				}
			case 4: // release the newest memory guard (twice: idempotent)
				if len(guards) == 0 {
					continue
				}
				g := &guards[len(guards)-1]
				if g.n > m.held { // its bytes were given back with ReleaseMemory
					func() {
						defer func() {
							if r := recover(); r == nil {
								t.Fatal("over-releasing guard did not panic")
							}
						}()
						g.Release()
					}()
				} else {
					m.held -= g.n
					g.Release()
				}
				g.Release()
				guards = guards[:len(guards)-1]
			case 5: // TryAcquireSlot
				bad := over(m.slotsHeld, 1, m.l.MaxConcurrent)
				g, err := tr.TryAcquireSlot()
				refused(err, bad, "TryAcquireSlot")
				if !bad {
					slotGuards = append(slotGuards, g)
					m.slotsHeld++
				}
			case 6: // release a slot
				if len(slotGuards) == 0 {
					continue
				}
				slotGuards[0].Release()
				slotGuards = slotGuards[1:]
				m.slotsHeld--
			case 7: // CheckFileSize and TrackCall
				refused(tr.CheckFileSize(n), n > 100, "CheckFileSize")
				refused(tr.TrackCall(), false, "TrackCall")
				m.calls++
			}
			u := tr.Usage()
			if u.Operations != m.ops || u.MemoryBytes != m.held || u.TotalMemoryBytes != m.total ||
				u.PeakMemoryBytes != m.peak || u.Concurrent != m.slotsHeld || u.Calls != m.calls {
				t.Fatalf("step %d: usage %+v, model %+v", i/2, u, m)
			}
			if s := acct.Stats(); !detached && (s.Operations != m.acctOps || s.MemoryBytes != m.held || s.TotalMemoryBytes != m.acctTotal) {
				t.Fatalf("step %d: account %+v, model %+v", i/2, s, m)
			}
		}
		for i := range slotGuards {
			slotGuards[i].Release()
		}
		end := tr.End()
		if end.Operations != m.ops {
			t.Fatalf("End: %+v, model %+v", end, m)
		}
		if detached {
			if end.MemoryBytes != m.held || end.TotalMemoryBytes != m.total {
				t.Fatalf("End: %+v, model %+v", end, m)
			}
			for i := range guards { // after End, releasing changes nothing
				guards[i].Release()
			}
			if u := tr.Usage(); u != end {
				t.Fatalf("usage changed after End: %+v, was %+v", u, end)
			}
			return
		}
		s := acct.Stats()
		if s.MemoryBytes != 0 || s.Operations != m.ops || s.TotalMemoryBytes != m.total {
			t.Fatalf("after End: account %+v, model %+v", s, m)
		}
		acct.mu.Lock()
		for i, r := range meterResource {
			if acct.limits[r].Load() > 0 && acct.reserved[i] != acct.committed[i] {
				t.Errorf("%s: reservations left behind: reserved %d committed %d", r, acct.reserved[i], acct.committed[i])
			}
		}
		acct.mu.Unlock()
	})
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
