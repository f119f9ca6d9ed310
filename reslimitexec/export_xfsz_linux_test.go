//go:build linux

package reslimitexec

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// NeedXfszCounter makes sure the SIGXFSZ counter works for the test's
// children: it mounts a tracefs on a new directory when none is mounted
// (unmounted and removed at cleanup), and skips the test with the reason
// where the counter cannot work.
func NeedXfszCounter(t testing.TB) {
	t.Helper()
	resetXfszProbe()
	t.Cleanup(resetXfszProbe)
	if _, err := signalGenerateID(); err != nil {
		dir, err := os.MkdirTemp("", "reslimitexec-tracefs-")
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("nodev", dir, "tracefs", 0, ""); err != nil {
			os.Remove(dir)
			if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENODEV) {
				t.Skipf("no tracefs mounted, and mounting one failed (%v): SIGXFSZ cannot be counted here", err)
			}
			t.Fatalf("mount -t tracefs nodev %s: %v", dir, err)
		}
		t.Cleanup(func() {
			resetXfszProbe()
			if err := unix.Unmount(dir, 0); err != nil {
				t.Errorf("unmounting %s: %v", dir, err)
				_ = unix.Unmount(dir, unix.MNT_DETACH)
			}
			if err := os.Remove(dir); err != nil {
				t.Errorf("removing %s: %v", dir, err)
			}
		})
		resetXfszProbe()
	}
	fd, err := openXfszCounter(os.Getpid())
	if err != nil {
		t.Skipf("SIGXFSZ cannot be counted here: %v", err)
	}
	unix.Close(fd)
}
