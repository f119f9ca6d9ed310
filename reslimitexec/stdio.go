package reslimitexec

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// DefaultWaitDelay is how long Wait waits, after the child has exited or
// was killed, for the copying of its standard input, output and error to
// and from a cmd.Stdin, cmd.Stdout or cmd.Stderr that is not an *os.File
// (a bytes.Buffer, an io.Pipe, a net.Conn), when cmd.WaitDelay is 0.
// Set cmd.WaitDelay to choose another bound.
//
// When the copying has not finished by then (a descendant that outlived
// the child still holds the output pipe, or the caller's writer blocks),
// Wait closes the pipes, waits at most as long again for a copy in the
// middle of a Read or Write of the caller's to return, and returns: so
// Wait returns at most 2×WaitDelay after the child exited or was killed
// (1 s by default). It then returns exec.ErrWaitDelay if there was no
// other error. A Read or Write of the caller's that was still in progress
// is abandoned: it is left to return on its own, after which nothing more
// is read or written, so the reader or writer must be safe to use from
// another goroutine meanwhile (an io.Pipe and a net.Conn are). Go's own
// exec.Cmd.Wait, even with WaitDelay, waits for such a call for ever.
const DefaultWaitDelay = 500 * time.Millisecond

// stdio holds the pipes between the child and the caller's non-file
// Stdin, Stdout and Stderr, which reslimitexec copies itself instead of
// exec.Cmd, so that Wait can stop waiting for them (see DefaultWaitDelay).
type stdio struct {
	copiers []*copier
	child   []*os.File // the child's ends, closed once it has started
	// The caller's cmd.Stdin, Stdout and Stderr, put back after the start.
	in       io.Reader
	out, err io.Writer
}

// copier copies between one pipe and a reader or writer of the caller's.
type copier struct {
	f         *os.File  // this process's end of the pipe
	r         io.Reader // the caller's Stdin, or
	w         io.Writer // the caller's Stdout or Stderr
	closeOnce sync.Once
	done      chan struct{} // closed when the copying goroutine returns

	mu        sync.Mutex
	inCall    bool // in a Read or Write of the caller's
	abandoned bool // Wait has given up on it: call nothing more
	err       error
}

// redirect replaces each of cmd.Stdin, Stdout and Stderr that is set and
// not an *os.File with a pipe of its own (one for Stdout and Stderr when
// they are the same writer, as exec.Cmd does), and returns them, to be
// passed to started once cmd has been started (or has failed to start).
func redirect(cmd *exec.Cmd) (*stdio, error) {
	s := &stdio{in: cmd.Stdin, out: cmd.Stdout, err: cmd.Stderr}
	pipe := func() (r, w *os.File, err error) {
		if r, w, err = os.Pipe(); err != nil {
			s.started(cmd, false)
			return nil, nil, fmt.Errorf("reslimitexec: a pipe for the child's standard input or output: %w", err)
		}
		return r, w, nil
	}
	if s.in != nil && !isFile(s.in) {
		pr, pw, err := pipe()
		if err != nil {
			return nil, err
		}
		s.child = append(s.child, pr)
		s.copiers = append(s.copiers, &copier{f: pw, r: s.in, done: make(chan struct{})})
		cmd.Stdin = pr
	}
	if s.out != nil && !isFile(s.out) {
		pr, pw, err := pipe()
		if err != nil {
			return nil, err
		}
		s.child = append(s.child, pw)
		s.copiers = append(s.copiers, &copier{f: pr, w: s.out, done: make(chan struct{})})
		cmd.Stdout = pw
	}
	if s.err != nil && !isFile(s.err) {
		if cmd.Stdout != s.out && sameWriter(s.err, s.out) {
			cmd.Stderr = cmd.Stdout // one pipe: one Write at a time
		} else {
			pr, pw, err := pipe()
			if err != nil {
				return nil, err
			}
			s.child = append(s.child, pw)
			s.copiers = append(s.copiers, &copier{f: pr, w: s.err, done: make(chan struct{})})
			cmd.Stderr = pw
		}
	}
	return s, nil
}

// sameWriter reports whether a and b are the same writer (false when
// their type cannot be compared).
func sameWriter(a, b io.Writer) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// started closes the child's ends of the pipes and puts the caller's
// Stdin, Stdout and Stderr back in cmd; then, if the child started,
// starts copying, else closes this process's ends too.
func (s *stdio) started(cmd *exec.Cmd, ok bool) {
	for _, f := range s.child {
		f.Close()
	}
	s.child = nil
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s.in, s.out, s.err
	for _, c := range s.copiers {
		switch {
		case !ok:
			c.close()
			close(c.done)
		case c.r != nil:
			go c.copyIn()
		default:
			go c.copyOut()
		}
	}
}

func isFile(v any) bool {
	_, ok := v.(*os.File)
	return ok
}

func (c *copier) close() { c.closeOnce.Do(func() { c.f.Close() }) }

// enter marks the start of a call of the caller's; false if Wait has
// given up on the copy.
func (c *copier) enter() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.abandoned {
		return false
	}
	c.inCall = true
	return true
}

func (c *copier) leave() {
	c.mu.Lock()
	c.inCall = false
	c.mu.Unlock()
}

// finish records the copy's error and closes this process's end of the
// pipe (the child then gets EPIPE, or EOF on its standard input).
func (c *copier) finish(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
	c.close()
	close(c.done)
}

// copyOut copies what the child writes to the pipe into w, until the pipe
// reaches EOF (every process holding its other end has closed it), w
// fails, or Wait closes the pipe.
func (c *copier) copyOut() {
	buf := make([]byte, 32<<10)
	for {
		n, rerr := c.f.Read(buf)
		if n > 0 {
			if !c.enter() {
				c.finish(nil)
				return
			}
			m, werr := c.w.Write(buf[:n])
			c.leave()
			if werr == nil && m < n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				c.finish(werr)
				return
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				rerr = nil
			}
			c.finish(rerr)
			return
		}
	}
}

// copyIn copies r into the pipe to the child's standard input until r
// ends (then the pipe is closed: the child reads EOF) or fails, the child
// is gone (EPIPE, not an error, as with exec.Cmd), or Wait closes the pipe.
func (c *copier) copyIn() {
	buf := make([]byte, 32<<10)
	for {
		if !c.enter() {
			c.finish(nil)
			return
		}
		n, rerr := c.r.Read(buf)
		c.leave()
		if n > 0 {
			if _, werr := c.f.Write(buf[:n]); werr != nil {
				if errors.Is(werr, syscall.EPIPE) {
					werr = nil
				}
				c.finish(werr)
				return
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				rerr = nil
			}
			c.finish(rerr)
			return
		}
	}
}

// wait waits for the copies to finish, for at most delay (the child has
// exited); then closes the pipes and waits at most delay again for a copy
// in a call of the caller's. It returns the first copy error, or
// exec.ErrWaitDelay when it gave up on a copy.
func (s *stdio) wait(delay time.Duration) error {
	if s == nil || len(s.copiers) == 0 {
		return nil
	}
	if delay <= 0 {
		delay = DefaultWaitDelay
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	expired := false
	for _, c := range s.copiers {
		if expired {
			break
		}
		select {
		case <-c.done:
		case <-timer.C:
			expired = true
		}
	}
	if expired {
		for _, c := range s.copiers {
			c.close() // unblocks a copy waiting on the pipe
		}
		timer.Reset(delay)
	grace:
		for _, c := range s.copiers {
			select {
			case <-c.done:
			case <-timer.C:
				break grace
			}
		}
	}
	var first error
	for _, c := range s.copiers {
		c.mu.Lock()
		select {
		case <-c.done:
			if first == nil {
				first = c.err
			}
		default:
			// Still in a call of the caller's (or just leaving the
			// pipe): abandoned. It returns after that call, calling
			// nothing more.
			c.abandoned = true
		}
		c.mu.Unlock()
	}
	if expired {
		// The pipes were closed: what was left in them is lost.
		return exec.ErrWaitDelay
	}
	return first
}
