//go:build linux

package reslimitexec

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// killBound is how long killing a child's cgroup waits for it to be empty
// (processes in uninterruptible sleep can take a while to die); past it,
// the cgroup is left behind, still named after this process.
const killBound = 5 * time.Second

// v1Controllers are the cgroup v1 controllers the cgroup1 backend needs.
var v1Controllers = []string{"memory", "pids", "cpuacct", "freezer"}

// cgBackend is where the cgroups of children are made.
type cgBackend struct {
	v2      bool
	parent  string            // v2: the parent cgroup's directory
	parents map[string]string // v1: the parent's directory per controller
}

func (b *cgBackend) name() string {
	if b.v2 {
		return "cgroup2"
	}
	return "cgroup1"
}

// cgMounts is what /proc/self/mountinfo and /proc/self/cgroup say.
type cgMounts struct {
	v2Mount, v2Path string            // the cgroup2 mount, this process's path in it
	v1Mount, v1Path map[string]string // per controller
}

func readCgMounts() (cgMounts, error) {
	m := cgMounts{v1Mount: map[string]string{}, v1Path: map[string]string{}}
	roots := map[string]string{}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return m, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 5 || len(b) < 3 {
			continue
		}
		root, mnt := a[3], unescapeMount(a[4])
		switch b[0] {
		case "cgroup2":
			if m.v2Mount == "" {
				m.v2Mount, roots[""] = mnt, root
			}
		case "cgroup":
			for _, o := range strings.Split(b[2], ",") {
				for _, c := range v1Controllers {
					if o == c && m.v1Mount[c] == "" {
						m.v1Mount[c], roots[c] = mnt, root
					}
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return m, err
	}
	rel := func(path, root string) string {
		if root != "/" && strings.HasPrefix(path, root) {
			path = strings.TrimPrefix(path, root)
		}
		return path
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			m.v2Path = rel(parts[2], roots[""])
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if _, ok := m.v1Mount[c]; ok {
				m.v1Path[c] = rel(parts[2], roots[c])
			}
		}
	}
	return m, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				sb.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		sb.WriteByte(s[i])
	}
	return sb.String()
}

// probeDir reports whether a cgroup can be made (and removed) in dir.
func probeDir(dir string) bool {
	d := filepath.Join(dir, fmt.Sprintf("reslimitexec-probe-%d-%d", os.Getpid(), cgSeq.Add(1)))
	if err := unix.Mkdir(d, 0o755); err != nil {
		return false
	}
	return unix.Rmdir(d) == nil
}

// findBackend returns the cgroup backend for children made under parent
// (a path inside each hierarchy; "" for this process's own cgroup), or an
// error saying why there is none.
func findBackend(parent string) (*cgBackend, error) {
	m, err := readCgMounts()
	if err != nil {
		return nil, err
	}
	var why []string
	if m.v2Mount != "" {
		dir := filepath.Join(m.v2Mount, pick(parent, m.v2Path))
		ctl, _ := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
		have := strings.Fields(string(ctl))
		switch {
		case !contains(have, "memory") || !contains(have, "pids"):
			why = append(why, "cgroup2: the memory and pids controllers are not available in "+dir)
		case !enableV2(dir):
			why = append(why, "cgroup2: cannot enable the memory and pids controllers for the children of "+dir)
		case !probeDir(dir):
			why = append(why, "cgroup2: cannot make a cgroup in "+dir)
		default:
			return &cgBackend{v2: true, parent: dir}, nil
		}
	}
	b := &cgBackend{parents: map[string]string{}}
	for _, c := range v1Controllers {
		mnt, ok := m.v1Mount[c]
		if !ok {
			return nil, fmt.Errorf("reslimitexec: no cgroup backend: %s; cgroup1: the %s controller is not mounted", strings.Join(why, "; "), c)
		}
		dir := filepath.Join(mnt, pick(parent, m.v1Path[c]))
		if !probeDir(dir) {
			return nil, fmt.Errorf("reslimitexec: no cgroup backend: %s; cgroup1: cannot make a cgroup in %s", strings.Join(why, "; "), dir)
		}
		b.parents[c] = dir
	}
	if !ptraceWorks() {
		return nil, errors.New("reslimitexec: no cgroup backend: cgroup1 needs ptrace to move the child in before it runs, and ptrace is not permitted")
	}
	return b, nil
}

func pick(parent, own string) string {
	if parent != "" {
		return parent
	}
	return own
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// enableV2 makes sure the children of dir get the memory and pids
// controllers.
func enableV2(dir string) bool {
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	have := strings.Fields(string(b))
	if contains(have, "memory") && contains(have, "pids") {
		return true
	}
	return writeFile(filepath.Join(dir, "cgroup.subtree_control"), "+memory +pids") == nil
}

// defaultBackend is the backend for children made under this process's
// own cgroups, found once.
var defaultBackend = sync.OnceValues(func() (*cgBackend, error) { return findBackend("") })

var (
	parentMu       sync.Mutex
	parentBackends = map[string]*cgBackend{}
)

// backendFor returns the backend for a parent chosen with
// WithCgroupParent (found once per parent; an error is not kept).
func backendFor(parent string) (*cgBackend, error) {
	if parent == "" {
		return defaultBackend()
	}
	parentMu.Lock()
	defer parentMu.Unlock()
	if b, ok := parentBackends[parent]; ok {
		return b, nil
	}
	b, err := findBackend(parent)
	if err == nil {
		parentBackends[parent] = b
	}
	return b, err
}

// cgSeq numbers the cgroups this process makes.
var cgSeq atomic.Int64

// cgPrefix starts the name of every cgroup this process makes.
func cgPrefix() string { return "reslimitexec-" + strconv.Itoa(os.Getpid()) + "-" }

// cgroup is one child run's cgroup (one directory per v1 controller),
// made for it and removed after it: never reused, which cgroup2 needs
// (Linux 6.18, at least, kills a child cloned into a cgroup that was
// killed through cgroup.kill before).
type cgroup struct {
	v2                  bool
	dir                 string // v2
	mem, pids, cpu, frz string // v1
	fd                  int    // v2: the directory, for CLONE_INTO_CGROUP
	path                []byte
	buf                 []byte
}

// newCgroup makes a cgroup for one child with a memory limit (bytes, 0:
// none) and a cap on its tasks (0: none).
func newCgroup(b *cgBackend, memLimit, maxProcs int64) (_ *cgroup, err error) {
	name := cgPrefix() + strconv.FormatInt(cgSeq.Add(1), 10)
	c := &cgroup{v2: b.v2, fd: -1}
	defer func() {
		if err != nil {
			c.remove()
			err = fmt.Errorf("reslimitexec: making the child's cgroup: %w", err)
		}
	}()
	if b.v2 {
		c.dir = filepath.Join(b.parent, name)
		if err := unix.Mkdir(c.dir, 0o755); err != nil {
			return c, err
		}
		if err := c.limitV2(memLimit, maxProcs); err != nil {
			return c, err
		}
		fd, err := unix.Open(c.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return c, err
		}
		c.fd = fd
		return c, nil
	}
	for _, ctl := range v1Controllers {
		d := filepath.Join(b.parents[ctl], name)
		if err := unix.Mkdir(d, 0o755); err != nil {
			return c, err
		}
		switch ctl {
		case "memory":
			c.mem = d
		case "pids":
			c.pids = d
		case "cpuacct":
			c.cpu = d
		case "freezer":
			c.frz = d
		}
	}
	if memLimit > 0 {
		v := strconv.FormatInt(memLimit, 10)
		if err := writeFile(filepath.Join(c.mem, "memory.limit_in_bytes"), v); err != nil {
			return c, err
		}
		// No swap to spill into, where swap is accounted.
		_ = writeFile(filepath.Join(c.mem, "memory.memsw.limit_in_bytes"), v)
	}
	if maxProcs > 0 {
		if err := writeFile(filepath.Join(c.pids, "pids.max"), strconv.FormatInt(maxProcs, 10)); err != nil {
			return c, err
		}
	}
	return c, nil
}

// limitV2 writes the limits of a cgroup v2: memory.max (with no swap,
// and an OOM kill taking the whole group) when memLimit > 0, pids.max
// when maxProcs > 0.
func (c *cgroup) limitV2(memLimit, maxProcs int64) error {
	if memLimit > 0 {
		if err := writeFile(filepath.Join(c.dir, "memory.max"), strconv.FormatInt(memLimit, 10)); err != nil {
			return err
		}
		_ = writeFile(filepath.Join(c.dir, "memory.swap.max"), "0")
		_ = writeFile(filepath.Join(c.dir, "memory.oom.group"), "1")
	}
	if maxProcs > 0 {
		if err := writeFile(filepath.Join(c.dir, "pids.max"), strconv.FormatInt(maxProcs, 10)); err != nil {
			return err
		}
	}
	return nil
}

// join moves process pid into the cgroup (v1: the child, stopped after
// its execve, before its first instruction).
func (c *cgroup) join(pid int) error {
	v := strconv.Itoa(pid)
	for _, d := range []string{c.frz, c.pids, c.cpu, c.mem} {
		if err := writeFile(filepath.Join(d, "cgroup.procs"), v); err != nil {
			return fmt.Errorf("reslimitexec: moving the child into %s: %w", d, err)
		}
	}
	return nil
}

// cgStats is what a cgroup has used.
type cgStats struct {
	cpu       time.Duration // CPU time of every task ever in it
	mem, peak int64         // bytes charged now, and at most
	oomKills  int64         // tasks the OOM killer killed in it
	pidsMax   int64         // forks refused at the task cap
	tasks     int64         // tasks in it now
	tasksPeak int64         // and at most
}

// stats reads what the cgroup has used. Not safe for concurrent use.
func (c *cgroup) stats() cgStats {
	var s cgStats
	if c.v2 {
		s.cpu = time.Duration(c.field(c.dir, "cpu.stat", "usage_usec")) * time.Microsecond
		s.mem = c.num(c.dir, "memory.current")
		s.peak = c.num(c.dir, "memory.peak")
		s.oomKills = c.field(c.dir, "memory.events", "oom_kill")
		s.pidsMax = c.field(c.dir, "pids.events", "max")
		s.tasks = c.num(c.dir, "pids.current")
		s.tasksPeak = c.num(c.dir, "pids.peak")
	} else {
		s.cpu = time.Duration(c.num(c.cpu, "cpuacct.usage"))
		s.mem = c.num(c.mem, "memory.usage_in_bytes")
		s.peak = c.num(c.mem, "memory.max_usage_in_bytes")
		s.oomKills = c.field(c.mem, "memory.oom_control", "oom_kill")
		s.pidsMax = c.field(c.pids, "pids.events", "max")
		s.tasks = c.num(c.pids, "pids.current")
		s.tasksPeak = c.num(c.pids, "pids.peak")
	}
	s.peak = max(s.peak, s.mem)
	s.tasksPeak = max(s.tasksPeak, s.tasks)
	return s
}

// readAt reads file name of cgroup directory dir.
func (c *cgroup) readAt(dir, name string) ([]byte, bool) {
	c.path = append(append(append(c.path[:0], dir...), '/'), name...)
	s := sampler{buf: c.buf, path: c.path}
	b, ok := s.read()
	c.buf = s.buf
	return b, ok
}

// num reads a file holding one number (0 if absent, "max" or unreadable).
func (c *cgroup) num(dir, name string) int64 {
	b, ok := c.readAt(dir, name)
	if !ok {
		return 0
	}
	return atoi(b)
}

// field reads the number after key in a file of "key value" lines.
func (c *cgroup) field(dir, name, key string) int64 {
	b, ok := c.readAt(dir, name)
	if !ok {
		return 0
	}
	for len(b) > 0 {
		line := b
		if i := indexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(line) > len(key) && string(line[:len(key)]) == key && line[len(key)] == ' ' {
			return atoi(line[len(key)+1:])
		}
	}
	return 0
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// procs returns the processes in the cgroup.
func (c *cgroup) procs() []int {
	dir := c.dir
	if !c.v2 {
		dir = c.frz
	}
	b, ok := c.readAt(dir, "cgroup.procs")
	if !ok {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// kill kills every process in the cgroup, setsid and double-fork escapees
// included, and waits (up to deadline) until none is left. v2 writes
// cgroup.kill; v1 freezes the group, kills each process and thaws it,
// until it is empty. It reports whether the cgroup is empty.
func (c *cgroup) kill(deadline time.Time) bool {
	if c.v2 {
		if err := writeFile(filepath.Join(c.dir, "cgroup.kill"), "1"); err == nil {
			return c.waitEmptyV2(deadline)
		}
		// No cgroup.kill (Linux < 5.14): kill each, as for v1.
	}
	for {
		pids := c.procs()
		if len(pids) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		frozen := !c.v2 && writeFile(filepath.Join(c.frz, "freezer.state"), "FROZEN") == nil
		var fds []unix.PollFd
		for _, pid := range pids {
			fd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				_ = unix.Kill(pid, unix.SIGKILL)
				continue
			}
			_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
			fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
		}
		if frozen {
			// Killed tasks die once thawed; any a fork added meanwhile is
			// found on the next round.
			_ = writeFile(filepath.Join(c.frz, "freezer.state"), "THAWED")
		}
		waitPidfds(fds, deadline)
	}
}

// waitPidfds waits until every pidfd in fds is readable (its process has
// exited) or deadline passes, and closes them.
func waitPidfds(fds []unix.PollFd, deadline time.Time) {
	defer func() {
		for _, f := range fds {
			unix.Close(int(f.Fd))
		}
	}()
	pending := fds
	for len(pending) > 0 {
		ms := int(time.Until(deadline).Milliseconds())
		if ms <= 0 {
			return
		}
		n, err := unix.Poll(pending, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return
		}
		// Those that exited leave the poll set (fds still closes them).
		var rest []unix.PollFd
		for _, f := range pending {
			if f.Revents == 0 {
				rest = append(rest, f)
			}
		}
		pending = rest
	}
}

// waitEmptyV2 waits until cgroup.events says "populated 0": the file is
// pollable (POLLPRI when it changes).
func (c *cgroup) waitEmptyV2(deadline time.Time) bool {
	path := filepath.Join(c.dir, "cgroup.events")
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return len(c.procs()) == 0
	}
	defer unix.Close(fd)
	for {
		if c.field(c.dir, "cgroup.events", "populated") == 0 {
			return true
		}
		ms := int(time.Until(deadline).Milliseconds())
		if ms <= 0 {
			return false
		}
		// Reading the file arms the notification; poll waits for a change.
		var b [256]byte
		_, _ = unix.Pread(fd, b[:], 0)
		if c.field(c.dir, "cgroup.events", "populated") == 0 {
			return true
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLPRI}}
		if _, err := unix.Poll(pfd, ms); err != nil && err != unix.EINTR {
			return len(c.procs()) == 0
		}
	}
}

// remove removes the cgroup's directories (it must be empty) and closes
// its descriptor. It returns the first error.
func (c *cgroup) remove() error {
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
	var first error
	for _, d := range []string{c.dir, c.mem, c.pids, c.cpu, c.frz} {
		if d == "" {
			continue
		}
		if err := rmdirCgroup(d); err != nil && first == nil {
			first = fmt.Errorf("reslimitexec: removing cgroup %s: %w", d, err)
		}
	}
	return first
}

// rmdirCgroup removes the cgroup directory d. A process that was killed
// leaves cgroup.procs as soon as it starts exiting, but the cgroup for a
// moment longer (EBUSY): that is retried for up to a second.
func rmdirCgroup(d string) error {
	deadline := time.Now().Add(time.Second)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err := unix.Rmdir(d)
		if err == nil || err == unix.ENOENT {
			return nil
		}
		if err != unix.EBUSY || time.Now().After(deadline) {
			return err
		}
		time.Sleep(delay)
	}
}

// writeFile writes s to an existing (cgroupfs) file.
func writeFile(path, s string) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for {
		_, err = unix.Write(fd, []byte(s))
		if err != unix.EINTR {
			return err
		}
	}
}
