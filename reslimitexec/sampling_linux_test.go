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

// samplingTests are the tests of what a child is bound by, which run on
// the default backend, and again on the sampling backend where the
// default is a cgroup (TestSamplingBackend).
var samplingTests = []struct {
	name string
	fn   func(*testing.T)
}{
	{"RlimitsInPlaceAtStart", TestRlimitsInPlaceAtStart},
	{"CPULimitStopsSpinner", TestCPULimitStopsSpinner},
	{"GrandchildCPUCounted", TestGrandchildCPUCounted},
	{"SleepingChildChargedLittle", TestSleepingChildChargedLittle},
	{"UsageBilledToTenant", TestUsageBilledToTenant},
	{"MemoryLimitStopsAllocator", TestMemoryLimitStopsAllocator},
	{"TenantMemoryStopsAllocator", TestTenantMemoryStopsAllocator},
	{"PythonAllocation", TestPythonAllocation},
	{"FileSizeLimit", TestFileSizeLimit},
	{"TimeoutKillsGroup", TestTimeoutKillsGroup},
	{"ExitKillsLeftovers", TestExitKillsLeftovers},
	{"CancelCause", TestCancelCause},
	{"CancelAndWaitDelay", TestCancelAndWaitDelay},
	{"NoTrackerRunsUnlimited", TestNoTrackerRunsUnlimited},
	{"ChildOfEndedRunKilled", TestChildOfEndedRunKilled},
	{"ExecFailure", TestExecFailure},
	{"TimeoutKillsDescendantThatLeftTheGroup", TestTimeoutKillsDescendantThatLeftTheGroup},
	{"TimeoutWithBlockedStdoutWriter", TestTimeoutWithBlockedStdoutWriter},
	{"StdioCopied", TestStdioCopied},
	{"ExhaustedTenantStartsNothing", TestExhaustedTenantStartsNothing},
	{"ProcessCap", testSamplingProcessCap},
}

// TestSamplingBackend runs samplingTests with every child forced onto the
// sampling backend (as WithoutCgroup does), where the default backend is
// a cgroup: both backends stay covered.
func TestSamplingBackend(t *testing.T) {
	if e := reslimitexec.Enforcement(); e != "cgroup1" && e != "cgroup2" {
		t.Skipf("the default backend is %q: these tests ran on it already", e)
	}
	reslimitexec.ForceSampling(t)
	p, err := reslimitexec.Start(context.Background(), exec.Command("/bin/true"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	if e := p.Enforcement(); e != "ptrace" && e != "after-start" {
		t.Fatalf("a child forced onto sampling got %q", e)
	}
	for _, tc := range samplingTests {
		t.Run(tc.name, tc.fn)
	}
}

// testSamplingProcessCap: 300 concurrent sleeps under a cap of 32 are
// stopped with processes when a sample counts more than 32 tasks (the
// tree can pass the cap between samples: no kernel cap here).
func testSamplingProcessCap(t *testing.T) {
	const limit = 32
	var p *reslimitexec.Process
	_, err := runIn(t, reslimit.Limits{Timeout: 30 * time.Second}, nil, func(ctx context.Context) error {
		var err error
		cmd := exec.Command("/bin/sh", "-c", `i=0; while [ $i -lt 300 ]; do sleep 30 & i=$((i+1)); done; wait`)
		if p, err = reslimitexec.Start(ctx, cmd, reslimitexec.WithMaxProcesses(limit), reslimitexec.WithoutCgroup()); err != nil {
			return err
		}
		return p.Wait()
	})
	le := limitErr(t, err, reslimit.Processes)
	t.Logf("%v; peak tasks sampled %d", le, p.Usage().PeakProcesses)
	if le.Limit != limit || p.Usage().PeakProcesses <= limit {
		t.Fatalf("error %v, peak %d: want the cap %d, passed", le, p.Usage().PeakProcesses, limit)
	}
}
