//go:build linux

package reslimitexec

import (
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// userHZ is the unit of the times in /proc/<pid>/stat: clock ticks, 100 per
// second on every Linux architecture (USER_HZ).
const userHZ = 100

var pageSize = int64(unix.Getpagesize())

// treeSample is what a process and its descendants use at one instant.
type treeSample struct {
	cpu     time.Duration // user+system, own and reaped children's
	rss     int64         // resident bytes, summed over the processes
	threads int           // threads of the processes that are not zombies
}

// sampler walks a process tree through /proc, reusing its buffers: a
// sample of a single-threaded child is about ten system calls and
// allocates nothing.
type sampler struct {
	buf   []byte
	path  []byte
	stack []int
	pids  []int // the processes of the last walk
	pgrps []int // and their process groups
}

// procStat is what the sampler reads from /proc/<pid>/stat.
type procStat struct {
	state                        byte
	pgrp                         int
	utime, stime, cutime, cstime int64 // clock ticks
	threads                      int
	rss                          int64 // pages
}

// walk samples root and its descendants (found through the children of
// each thread). A process that exits during the walk is skipped; its CPU
// time shows up in its parent's reaped children's time once reaped.
func (s *sampler) walk(root int) treeSample {
	var ts treeSample
	s.stack = append(s.stack[:0], root)
	s.pids, s.pgrps = s.pids[:0], s.pgrps[:0]
	for len(s.stack) > 0 {
		pid := s.stack[len(s.stack)-1]
		s.stack = s.stack[:len(s.stack)-1]
		st, ok := s.stat(pid)
		if !ok {
			continue
		}
		s.pids, s.pgrps = append(s.pids, pid), append(s.pgrps, st.pgrp)
		own := time.Duration(st.utime+st.stime) * (time.Second / userHZ)
		if st.state != 'Z' {
			// The process CPU clock: nanoseconds, all threads, live and dead.
			if c, ok := processCPU(pid); ok {
				own = c
			}
			ts.threads += st.threads
		}
		ts.cpu += own + time.Duration(st.cutime+st.cstime)*(time.Second/userHZ)
		ts.rss += st.rss * pageSize
		// Parents are read before their children: a child reaped
		// meanwhile is counted in its parent's reaped time or not at all
		// in this walk, never twice.
		if st.threads <= 1 {
			s.children(pid, pid)
		} else {
			s.allChildren(pid)
		}
	}
	return ts
}

// processCPU reads the CPU clock of process pid (CPUCLOCK_SCHED of the
// whole thread group).
func processCPU(pid int) (time.Duration, bool) {
	clk := (^int32(pid))<<3 | 2 // MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
	var ts unix.Timespec
	if err := unix.ClockGettime(clk, &ts); err != nil {
		return 0, false
	}
	return time.Duration(ts.Nano()), true
}

// read reads the small file at s.path into s.buf and returns its bytes.
func (s *sampler) read() ([]byte, bool) {
	fd, err := unix.Open(string(s.path), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false
	}
	defer unix.Close(fd)
	if len(s.buf) < 4096 {
		s.buf = make([]byte, 4096)
	}
	n := 0
	for {
		if n == len(s.buf) {
			s.buf = append(s.buf, make([]byte, n)...)
		}
		m, err := unix.Read(fd, s.buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, false
		}
		if m == 0 {
			return s.buf[:n], true
		}
		n += m
	}
}

func (s *sampler) procPath(pid int, rest string) {
	s.path = append(s.path[:0], "/proc/"...)
	s.path = strconv.AppendInt(s.path, int64(pid), 10)
	s.path = append(s.path, rest...)
}

func (s *sampler) stat(pid int) (procStat, bool) {
	var st procStat
	s.procPath(pid, "/stat")
	b, ok := s.read()
	if !ok {
		return st, false
	}
	// The command name (field 2) is in parentheses and may hold anything:
	// the fields that follow start after the last ')'.
	i := len(b) - 1
	for i >= 0 && b[i] != ')' {
		i--
	}
	if i < 0 {
		return st, false
	}
	field := 2
	for j := i + 1; j < len(b); {
		for j < len(b) && b[j] == ' ' {
			j++
		}
		k := j
		for k < len(b) && b[k] != ' ' && b[k] != '\n' {
			k++
		}
		if j == k {
			break
		}
		field++
		tok := b[j:k]
		switch field {
		case 3:
			st.state = tok[0]
		case 5:
			st.pgrp = int(atoi(tok))
		case 14:
			st.utime = atoi(tok)
		case 15:
			st.stime = atoi(tok)
		case 16:
			st.cutime = atoi(tok)
		case 17:
			st.cstime = atoi(tok)
		case 20:
			st.threads = int(atoi(tok))
		case 24:
			st.rss = atoi(tok)
			return st, true
		}
		j = k
	}
	return st, false
}

func atoi(b []byte) int64 {
	var n int64
	neg := false
	for i, c := range b {
		if i == 0 && c == '-' {
			neg = true
			continue
		}
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		return -n
	}
	return n
}

// children pushes the children of thread tid of process pid.
func (s *sampler) children(pid, tid int) {
	s.procPath(pid, "/task/")
	s.path = strconv.AppendInt(s.path, int64(tid), 10)
	s.path = append(s.path, "/children"...)
	b, ok := s.read()
	if !ok {
		return
	}
	for len(b) > 0 {
		j := 0
		for j < len(b) && b[j] != ' ' && b[j] != '\n' {
			j++
		}
		if j > 0 {
			s.stack = append(s.stack, int(atoi(b[:j])))
		}
		if j == len(b) {
			break
		}
		b = b[j+1:]
	}
}

// allChildren pushes the children of every thread of process pid (a
// child's parent is the thread that forked it).
func (s *sampler) allChildren(pid int) {
	d, err := os.Open("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		if tid, err := strconv.Atoi(n); err == nil {
			s.children(pid, tid)
		}
	}
}
