//go:build !linux

package reslimitexec

import (
	"time"
)

type platform struct{}

// backendRef is a cgroup backend: there is none here.
type backendRef = *struct{}

// Enforcement says how the rlimits reach a child on this platform: "none"
// here (not Linux): no rlimits and no sampling; only the wall time is
// enforced (ctx kills the child) and its CPU time is charged after it
// exits.
func Enforcement() string { return "none" }

// Enforcement names the backend that bounds this child: "none" here.
func (p *Process) Enforcement() string { return "none" }

func (p *Process) start() error {
	if err := p.cmd.Start(); err != nil {
		return err
	}
	go p.watch()
	return nil
}

// watch kills the child when ctx is done (the child only: process groups
// are not portable), until Wait has reaped it (p.exited).
func (p *Process) watch() {
	defer close(p.watchEnd)
	select {
	case <-p.exited:
		return
	case <-p.ctx.Done():
	}
	p.setCause(ctxErr(p.ctx, p.t))
	if p.cmd.Cancel != nil {
		_ = p.cmd.Cancel()
	}
	if p.cmd.Cancel != nil && p.cmd.WaitDelay > 0 {
		t := time.NewTimer(p.cmd.WaitDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-p.exited:
			return
		}
	}
	_ = p.cmd.Process.Kill() // after Wait reaped it: os.ErrProcessDone
}

func (p *Process) wait() error {
	werr := p.cmd.Wait()
	close(p.exited)
	<-p.watchEnd
	if ioErr := p.stdio.wait(p.cmd.WaitDelay); werr == nil {
		werr = ioErr
	}
	var cpu time.Duration
	if ps := p.cmd.ProcessState; ps != nil {
		cpu = ps.UserTime() + ps.SystemTime()
	}
	var ferr error
	if p.t != nil {
		ferr = p.finish(cpu, 0)
	}
	if c := p.getCause(); c != nil {
		return c
	}
	if ferr != nil {
		return ferr
	}
	return werr
}
