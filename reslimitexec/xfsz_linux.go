//go:build linux

package reslimitexec

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A child that ignores SIGXFSZ (Go and Python programs do) gets EFBIG
// from a write past RLIMIT_FSIZE and exits however it likes. The signal
// is generated all the same: Linux fires the signal:signal_generate
// tracepoint in the writer's context before it finds the signal ignored.
// So a perf counter of that tracepoint, filtered to SIGXFSZ, opened on the
// child while it is stopped after its execve and inherited by every thread
// and process it starts from then on, counts the SIGXFSZ its tree raised,
// ignored or not. It needs a tracefs mount (for the tracepoint's id) and
// perf events permitted to this process (root, CAP_PERFMON, or
// kernel.perf_event_paranoid -1); without them only a child killed by
// SIGXFSZ (or a shell exiting 153) is a file_size error.

// tracepointID is the id of the signal:signal_generate tracepoint, read
// from a tracefs mount once (resetXfszProbe forgets it, for tests).
var (
	tpMu      sync.Mutex
	tpChecked bool
	tpID      uint64
	tpErr     error
)

func signalGenerateID() (uint64, error) {
	tpMu.Lock()
	defer tpMu.Unlock()
	if !tpChecked {
		tpID, tpErr = findSignalGenerateID()
		tpChecked = true
	}
	return tpID, tpErr
}

func resetXfszProbe() {
	tpMu.Lock()
	tpChecked = false
	tpMu.Unlock()
}

// findSignalGenerateID reads the tracepoint's id from the first tracefs
// mount (or debugfs's tracing directory) of /proc/self/mountinfo.
func findSignalGenerateID() (uint64, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var dirs []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		a, b := strings.Fields(pre), strings.Fields(post)
		if !ok || len(a) < 5 || len(b) < 1 {
			continue
		}
		switch b[0] {
		case "tracefs":
			dirs = append(dirs, unescapeMount(a[4]))
		case "debugfs":
			dirs = append(dirs, filepath.Join(unescapeMount(a[4]), "tracing"))
		}
	}
	for _, d := range dirs {
		s, err := os.ReadFile(filepath.Join(d, "events/signal/signal_generate/id"))
		if err != nil {
			continue
		}
		if id, err := strconv.ParseUint(strings.TrimSpace(string(s)), 10, 64); err == nil {
			return id, nil
		}
	}
	return 0, errors.New("reslimitexec: no tracefs mounted with the signal:signal_generate tracepoint")
}

// openXfszCounter opens the counter of the SIGXFSZ signals raised by
// process pid (stopped, or not yet running its program) and by the
// threads and processes it starts from now on.
func openXfszCounter(pid int) (int, error) {
	id, err := signalGenerateID()
	if err != nil {
		return -1, err
	}
	attr := unix.PerfEventAttr{
		Type:   unix.PERF_TYPE_TRACEPOINT,
		Config: id,
		Size:   uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Bits:   unix.PerfBitInherit,
	}
	fd, err := unix.PerfEventOpen(&attr, pid, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("reslimitexec: perf_event_open of signal:signal_generate: %w", err)
	}
	filter := "sig == " + strconv.Itoa(int(unix.SIGXFSZ))
	if err := unix.IoctlSetString(fd, unix.PERF_EVENT_IOC_SET_FILTER, filter); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("reslimitexec: filtering signal:signal_generate: %w", err)
	}
	return fd, nil
}

// readXfszCounter returns the count of counter fd: the SIGXFSZ raised by
// the process and by those of its descendants and threads that have
// exited.
func readXfszCounter(fd int) int64 {
	var b [8]byte
	for {
		n, err := unix.Read(fd, b[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil || n != len(b) {
			return 0
		}
		return int64(binary.NativeEndian.Uint64(b[:]))
	}
}
