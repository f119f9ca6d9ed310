//go:build linux

package reslimitexec_test

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimitexec"
)

// BenchmarkTrueCgroup alternates plain exec of /bin/true with Run of it
// under Default() limits in a cgroup of its own (the default backend) and
// on the sampling backend, within one loop, and reports the median of
// each and the ratios to plain exec:
//
//	go test -run='^$' -bench=BenchmarkTrueCgroup -benchtime=300x -count=5 ./reslimitexec
func BenchmarkTrueCgroup(b *testing.B) {
	if e := reslimitexec.Enforcement(); e != "cgroup1" && e != "cgroup2" {
		b.Skipf("no cgroup backend here (%s)", e)
	}
	acct, err := reslimit.NewAccount("bench", reslimit.AccountLimits{})
	if err != nil {
		b.Fatal(err)
	}
	run := func(opts ...reslimitexec.Option) time.Duration {
		t, err := acct.Begin(reslimit.Default())
		if err != nil {
			b.Fatal(err)
		}
		s := time.Now()
		err = reslimitexec.Run(reslimit.NewContext(context.Background(), t), exec.Command("/bin/true"), opts...)
		d := time.Since(s)
		t.End()
		if err != nil {
			b.Fatal(err)
		}
		return d
	}
	var plain, cg, smp []time.Duration
	for b.Loop() {
		s := time.Now()
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
		plain = append(plain, time.Since(s))
		cg = append(cg, run())
		smp = append(smp, run(reslimitexec.WithoutCgroup()))
	}
	p, c, s := median(plain), median(cg), median(smp)
	b.ReportMetric(float64(p.Microseconds()), "exec-µs")
	b.ReportMetric(float64(c.Microseconds()), "cgroup-µs")
	b.ReportMetric(float64(s.Microseconds()), "sampling-µs")
	b.ReportMetric(float64(c)/float64(p), "cgroup/exec")
	b.ReportMetric(float64(s)/float64(p), "sampling/exec")
}
