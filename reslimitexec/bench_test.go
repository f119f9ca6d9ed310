package reslimitexec_test

import (
	"context"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimitexec"
)

// BenchmarkTrue runs /bin/true plainly and under reslimitexec, side by
// side: go test -run=^$ -bench=BenchmarkTrue -count=5 ./reslimitexec
func BenchmarkTrue(b *testing.B) {
	if _, err := exec.LookPath("/bin/true"); err != nil {
		b.Skip("/bin/true not found")
	}
	b.Run("exec", func(b *testing.B) {
		for b.Loop() {
			if err := exec.Command("/bin/true").Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reslimitexec/no-tracker", func(b *testing.B) {
		ctx := context.Background()
		for b.Loop() {
			if err := reslimitexec.Run(ctx, exec.Command("/bin/true")); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Default limits: CPU, memory and file size, so the child is started
	// stopped (ptrace, where permitted), gets its rlimits and is sampled.
	b.Run("reslimitexec/default-limits", func(b *testing.B) {
		acct, err := reslimit.NewAccount("bench", reslimit.AccountLimits{})
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			t, err := acct.Begin(reslimit.Default())
			if err != nil {
				b.Fatal(err)
			}
			err = reslimitexec.Run(reslimit.NewContext(context.Background(), t), exec.Command("/bin/true"))
			t.End()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkTrueInterleaved alternates the three ways of running /bin/true
// within one loop, so that a noisy machine slows them alike, and reports
// the median of each and the ratios to plain exec:
//
//	go test -run=^$ -bench=BenchmarkTrueInterleaved -benchtime=300x ./reslimitexec
func BenchmarkTrueInterleaved(b *testing.B) {
	if _, err := exec.LookPath("/bin/true"); err != nil {
		b.Skip("/bin/true not found")
	}
	acct, err := reslimit.NewAccount("bench", reslimit.AccountLimits{})
	if err != nil {
		b.Fatal(err)
	}
	var plain, bare, limited []time.Duration
	for b.Loop() {
		s := time.Now()
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
		plain = append(plain, time.Since(s))

		s = time.Now()
		if err := reslimitexec.Run(context.Background(), exec.Command("/bin/true")); err != nil {
			b.Fatal(err)
		}
		bare = append(bare, time.Since(s))

		t, err := acct.Begin(reslimit.Default())
		if err != nil {
			b.Fatal(err)
		}
		ctx := reslimit.NewContext(context.Background(), t)
		s = time.Now()
		err = reslimitexec.Run(ctx, exec.Command("/bin/true"))
		limited = append(limited, time.Since(s))
		t.End()
		if err != nil {
			b.Fatal(err)
		}
	}
	p, n, l := median(plain), median(bare), median(limited)
	b.ReportMetric(float64(p.Microseconds()), "exec-µs")
	b.ReportMetric(float64(n.Microseconds()), "no-tracker-µs")
	b.ReportMetric(float64(l.Microseconds()), "limited-µs")
	b.ReportMetric(float64(n)/float64(p), "no-tracker/exec")
	b.ReportMetric(float64(l)/float64(p), "limited/exec")
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[len(d)/2]
}
