// Command sandbox runs five small untrusted shell scripts — one spins, one
// allocates, one writes a big file, one sleeps forever, one leaves a
// spinner behind in a session of its own (setsid) and lets its parent
// exit — for two tenants under reslimit.Strict() (with a tighter CPU time
// and timeout, so it finishes in a few seconds), and prints the backend in
// force (reslimitexec.Enforcement()), what stopped each script, whether
// the escapee outlived its run, and what each tenant was charged.
//
//	go run ./examples/sandbox
//
// The scripts are /bin/sh, so it runs wherever a POSIX shell does; the
// limits bind on Linux (elsewhere only the timeout does: see the
// reslimitexec package doc).
//
// With a cgroup backend ("cgroup1", "cgroup2": root, or a delegated
// cgroup subtree) the escapee stays in its run's cgroup: its CPU is billed,
// the run's CPU limit stops it, and it is gone when its run returns. On the
// sampling backend ("ptrace", "after-start") it escapes: once its parent
// has exited it is outside the child's tree and process group, so it is
// neither billed nor killed, and spins on after its run (about 2 s of CPU,
// then it stops on its own). Run the untrusted program under bwrap to keep
// it in the tree there too: see docs/untrusted-code.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimitexec"
)

// The scripts. $1 is a directory the script may write to.
var scripts = []struct{ name, code string }{
	{"spin", `while :; do :; done`},
	{"allocate", `x=a; while :; do x=$x$x; done`},
	{"write", `head -c 100000000 /dev/zero > "$1/big"`},
	{"sleep", `sleep 3600`},
	// A spinner in a session of its own (setsid) whose parent exits at
	// once; it writes its pid to $1/pid and stops by itself after about
	// 2 s of CPU. (Where there is no setsid command, it just finishes.)
	{"escape", `command -v setsid >/dev/null || exit 0; (setsid /bin/sh -c 'i=0; while [ $i -lt 2000000 ]; do i=$((i+1)); done' & echo $! > "$1/pid"); exec sleep 3600`},
}

type result struct {
	tenant, script string
	err            error
	wall           time.Duration
	child          reslimitexec.Usage
	file           int64
	escapee        int  // the pid the script left in $1/pid, if any
	escaped        bool // whether that process still ran after the run
}

func main() {
	limits := reslimit.Strict() // 10 MiB memory, 5 MiB files, ...
	limits.MaxCPUTime = 500 * time.Millisecond
	limits.Timeout = 1500 * time.Millisecond

	ledger, err := newLedger()
	if err != nil {
		fatal(err)
	}
	tmp, err := os.MkdirTemp("", "sandbox")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(tmp)

	results := runAll(limits, ledger, tmp)
	printRuns(limits, results)
	fmt.Println()
	printCharges(ledger)
}

// newLedger bills the two tenants. alice has no quota of her own; bob's
// plan allows 300 ms of CPU in all, less than one run may use: his spinner
// is stopped by his plan.
func newLedger() (*reslimit.Ledger, error) {
	plans := map[string]reslimit.AccountLimits{
		"alice": {},
		"bob":   {MaxCPUTime: 300 * time.Millisecond},
	}
	return reslimit.NewLedger(reslimit.AccountLimits{}, reslimit.WithTenantLimits(func(tenant string) reslimit.AccountLimits {
		return plans[tenant]
	}))
}

// runAll runs every script for both tenants at once, each in a directory of
// its own under tmp, and returns the results sorted by tenant and script.
func runAll(limits reslimit.Limits, ledger *reslimit.Ledger, tmp string) []result {
	var (
		mu      sync.Mutex
		results []result
		wg      sync.WaitGroup
	)
	for _, tenant := range []string{"alice", "bob"} {
		for _, s := range scripts {
			wg.Go(func() {
				dir := filepath.Join(tmp, tenant+"-"+s.name)
				if err := os.Mkdir(dir, 0o755); err != nil {
					fatal(err)
				}
				r := runScript(limits, ledger.Account(tenant), s.code, dir)
				r.tenant, r.script = tenant, s.name
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	sort.Slice(results, func(i, j int) bool {
		if results[i].tenant != results[j].tenant {
			return results[i].tenant < results[j].tenant
		}
		return results[i].script < results[j].script
	})
	return results
}

// runScript runs one script in dir under limits, charged to acct, and
// records what stopped it, how long it ran, what the child used and how
// big a file it left.
func runScript(limits reslimit.Limits, acct *reslimit.Account, code, dir string) result {
	var r result
	start := time.Now()
	_, r.err = reslimit.Run(context.Background(), limits, func(ctx context.Context) error {
		p, err := reslimitexec.Start(ctx, exec.Command("/bin/sh", "-c", code, "sh", dir))
		if err != nil {
			return err
		}
		err = p.Wait()
		r.child = p.Usage()
		return err
	}, reslimit.WithAccount(acct))
	r.wall = time.Since(start)
	if fi, err := os.Stat(filepath.Join(dir, "big")); err == nil {
		r.file = fi.Size()
	}
	if b, err := os.ReadFile(filepath.Join(dir, "pid")); err == nil {
		if r.escapee, err = strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			r.escaped = running(r.escapee)
		}
	}
	return r
}

// printRuns prints the limits and one line per run.
func printRuns(limits reslimit.Limits, results []result) {
	fmt.Printf("limits per run: CPU %v, memory %d MiB, file %d MiB, timeout %v; backend: %s\n\n",
		limits.MaxCPUTime, limits.MaxMemoryBytes>>20, limits.MaxFileSize>>20, limits.Timeout, reslimitexec.Enforcement())
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TENANT\tSCRIPT\tSTOPPED BY\tWALL\tCHILD CPU\tCHILD PEAK RSS\tFILE")
	for _, r := range results {
		fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%v\t%.1f MiB\t%s\n", r.tenant, r.script, stoppedBy(r.err),
			r.wall.Round(time.Millisecond), r.child.CPUTime.Round(time.Millisecond),
			float64(r.child.PeakMemoryBytes)/(1<<20), fileSize(r.file))
	}
	w.Flush()
	for _, r := range results {
		switch {
		case r.escapee == 0:
		case r.escaped:
			fmt.Printf("%s's setsid escapee (pid %d) outlived its run, unbilled (it stops by itself)\n", r.tenant, r.escapee)
		default:
			fmt.Printf("%s's setsid escapee (pid %d) was killed with its run, its CPU billed\n", r.tenant, r.escapee)
		}
	}
}

// running reports whether process pid exists and is not a zombie (an
// escapee killed with its run may wait as one to be reaped by init).
func running(pid int) bool {
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		return !strings.Contains(string(st), ") Z ")
	}
	p, err := os.FindProcess(pid)
	return err == nil && p.Signal(syscall.Signal(0)) == nil
}

// printCharges prints what each tenant was charged and whether its quota
// is used up.
func printCharges(ledger *reslimit.Ledger) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TENANT\tRUNS\tCHILDREN\tCPU CHARGED\tPEAK MEMORY HELD\tMEMORY HELD NOW\tEXHAUSTED")
	for _, tenant := range ledger.Tenants() {
		st := ledger.Account(tenant).Stats()
		exhausted := "-"
		if r, ok := ledger.Account(tenant).Exhausted(); ok {
			exhausted = r.String()
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%v\t%.1f MiB\t%d\t%s\n", tenant, st.Evaluations, st.Calls,
			st.CPUTime.Round(time.Millisecond), float64(st.PeakMemoryBytes)/(1<<20), st.MemoryBytes, exhausted)
	}
	w.Flush()
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func stoppedBy(err error) string {
	var le *reslimit.LimitError
	var ee *exec.ExitError
	switch {
	case err == nil:
		return "finished"
	case errors.As(err, &le) && le.Tenant != "":
		return fmt.Sprintf("tenant %s quota", le.Resource)
	case errors.As(err, &le):
		return fmt.Sprintf("run %s limit", le.Resource)
	case errors.As(err, &ee):
		return ee.String()
	default:
		return err.Error()
	}
}

func fileSize(n int64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
