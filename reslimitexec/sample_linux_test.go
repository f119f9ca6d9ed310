//go:build linux

package reslimitexec

import (
	"os"
	"os/exec"
	"testing"
)

// BenchmarkSample is the cost of one watchdog sample of a single-process
// child (a sleeping /bin/sleep): go test -run=^$ -bench=Sample ./reslimitexec
func BenchmarkSample(b *testing.B) {
	cmd := exec.Command("sleep", "3600")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var s sampler
	b.ReportAllocs()
	for b.Loop() {
		if ts := s.walk(cmd.Process.Pid); ts.threads != 1 {
			b.Fatalf("sampled %+v, want one thread", ts)
		}
	}
}

func TestSampleSelf(t *testing.T) {
	var s sampler
	ts := s.walk(os.Getpid())
	if ts.cpu <= 0 || ts.rss <= 0 || ts.threads < 1 {
		t.Fatalf("sample of the test process: %+v", ts)
	}
}
