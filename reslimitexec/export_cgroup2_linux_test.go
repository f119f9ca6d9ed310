//go:build linux

package reslimitexec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// WithCgroup2In runs the child under the cgroup2 backend, its cgroup made
// in dir (a cgroup of a cgroup2 mount), whatever backend this process
// would find.
func WithCgroup2In(dir string) Option {
	return func(c *config) { c.backend = &cgBackend{v2: true, parent: dir} }
}

// MountCgroup2 mounts a cgroup2 hierarchy on a new directory and makes a
// cgroup in it for the test, whose path it returns with the mount's. It
// skips the test where the mount is not permitted. At cleanup it kills
// what is left in that cgroup and the ones under it, removes them,
// unmounts the hierarchy and removes the directory.
func MountCgroup2(t testing.TB) (parent, mnt string) {
	t.Helper()
	mnt, err := os.MkdirTemp("", "reslimitexec-cgroup2-")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("none", mnt, "cgroup2", 0, ""); err != nil {
		os.Remove(mnt)
		switch {
		case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
			t.Skipf("mounting cgroup2 is not permitted here (%v): needs CAP_SYS_ADMIN", err)
		case errors.Is(err, unix.ENODEV):
			t.Skipf("this kernel has no cgroup2 (%v)", err)
		}
		t.Fatalf("mount -t cgroup2 none %s: %v", mnt, err)
	}
	parent = filepath.Join(mnt, fmt.Sprintf("reslimitexec-test-%d-%d", os.Getpid(), cgSeq.Add(1)))
	t.Cleanup(func() {
		if err := removeCgroupTree(parent); err != nil {
			t.Errorf("removing the test's cgroups: %v", err)
		}
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmounting %s: %v", mnt, err)
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
		if err := os.Remove(mnt); err != nil {
			t.Errorf("removing %s: %v", mnt, err)
		}
	})
	if err := unix.Mkdir(parent, 0o755); err != nil {
		t.Fatalf("making a cgroup in the cgroup2 mount: %v", err)
	}
	return parent, mnt
}

// removeCgroupTree kills what is in the cgroup v2 at dir and below it, and
// removes them, children first.
func removeCgroupTree(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if e.IsDir() {
			errs = append(errs, removeCgroupTree(filepath.Join(dir, e.Name())))
		}
	}
	c := &cgroup{v2: true, dir: dir, fd: -1}
	if !c.kill(time.Now().Add(killBound)) {
		errs = append(errs, fmt.Errorf("%s still holds %v", dir, c.procs()))
	}
	if err := unix.Rmdir(dir); err != nil {
		errs = append(errs, fmt.Errorf("rmdir %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

// CgroupsIn returns the cgroups (directories) in dir whose names this
// process gives its children's cgroups.
func CgroupsIn(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), cgPrefix()) {
			names = append(names, e.Name())
		}
	}
	return names
}

// CgroupPrefix starts the names of the cgroups this process makes.
func CgroupPrefix() string { return cgPrefix() }
