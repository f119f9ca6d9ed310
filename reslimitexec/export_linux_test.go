//go:build linux

package reslimitexec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// CgroupLeftovers returns the cgroups this process made that still exist,
// under the default backend's parents.
func CgroupLeftovers() []string {
	b, err := defaultBackend()
	if err != nil {
		return nil
	}
	parents := []string{b.parent}
	if !b.v2 {
		parents = parents[:0]
		for _, d := range b.parents {
			parents = append(parents, d)
		}
	}
	var left []string
	for _, p := range parents {
		ents, _ := os.ReadDir(p)
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), cgPrefix()) {
				left = append(left, filepath.Join(p, e.Name()))
			}
		}
	}
	return left
}

// RemoveCgroup kills what is in the cgroup directory dir and removes it.
func RemoveCgroup(dir string) error {
	c := &cgroup{fd: -1}
	if b, _ := defaultBackend(); b != nil && b.v2 {
		c.v2, c.dir = true, dir
	} else {
		// cgroup.procs is read from c.frz; in another v1 hierarchy than
		// the freezer the freeze fails and each process is killed.
		c.frz = dir
	}
	c.kill(time.Now().Add(killBound))
	return os.Remove(dir)
}

// ForceSampling puts every child started until the test ends on the
// sampling backend, as WithoutCgroup does.
func ForceSampling(t testing.TB) {
	forceSampling.Store(true)
	t.Cleanup(func() { forceSampling.Store(false) })
}

// PtraceWorks reports whether a child can be started stopped at its first
// instruction here.
func PtraceWorks() bool { return ptraceWorks() }
