//go:build linux

package reslimitexec_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/reslimitexec"
)

// goWriter is a Go program that ignores SIGXFSZ (as every Go program does
// unless it asks for the signal; here explicitly) and writes N bytes
// (all: until an error) to PATH in 64 KiB blocks from a goroutine, then
// exits 3 on an error, 0 otherwise.
const goWriter = `package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
)

func main() {
	signal.Ignore(syscall.SIGXFSZ)
	n, _ := strconv.ParseInt(os.Args[2], 10, 64)
	f, err := os.Create(os.Args[1])
	if err != nil {
		os.Exit(2)
	}
	done := make(chan error)
	go func() {
		buf := make([]byte, 64<<10)
		for n != 0 {
			b := buf
			if n > 0 && int64(len(b)) > n {
				b = b[:n]
			}
			m, err := f.Write(b)
			if err != nil {
				done <- err
				return
			}
			n -= int64(m)
		}
		done <- nil
	}()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
}
`

// buildGoWriter builds goWriter, skipping the test without a go command.
func buildGoWriter(t *testing.T) string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the child with")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(goWriter), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "writer")
	build := exec.Command(goCmd, "build", "-o", bin, "main.go")
	build.Dir = dir
	build.Env = append(os.Environ(), "GO111MODULE=off", "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// A child that ignores SIGXFSZ and gets EFBIG past MaxFileSize is the
// run's file_size *LimitError, whatever its own exit status: a Go program
// (exits 3), a Python one that catches the OSError (exits 0), and the
// same Python under a shell.
// xfszWriter is a child that writes a file past MaxFileSize, ignoring
// SIGXFSZ.
type xfszWriter struct {
	name string
	cmd  func(path string) *exec.Cmd
}

// xfszWriters returns the Go writer, and Python ones (bare and under sh)
// where python3 is installed.
func xfszWriters(goWriter, pyCode string) []xfszWriter {
	cases := []xfszWriter{{"go", func(path string) *exec.Cmd { return exec.Command(goWriter, path, "-1") }}}
	if py, err := exec.LookPath("python3"); err == nil {
		cases = append(cases,
			xfszWriter{"python", func(path string) *exec.Cmd { return exec.Command(py, "-c", pyCode, path) }},
			xfszWriter{"python under sh", func(path string) *exec.Cmd {
				return exec.Command("/bin/sh", "-c", `"$0" -c "$1" "$2"; echo "python exited $?" >&2`, py, pyCode, path)
			}})
	}
	return cases
}

func TestFileSizeIgnoredSIGXFSZ(t *testing.T) {
	reslimitexec.NeedXfszCounter(t)
	const limit = 1 << 20
	dir := t.TempDir()
	pyCode := `import signal, sys
assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
f = open(sys.argv[1], "wb")
try:
    while True:
        f.write(b"x" * 65536); f.flush()
except OSError as e:
    print(e, file=sys.stderr)
`
	goWriter := buildGoWriter(t)
	cases := xfszWriters(goWriter, pyCode)
	for _, backend := range []struct {
		name string
		opts []reslimitexec.Option
	}{{"default", nil}, {"sampling", []reslimitexec.Option{reslimitexec.WithoutCgroup()}}} {
		for _, tc := range cases {
			t.Run(backend.name+"/"+tc.name, func(t *testing.T) {
				path := filepath.Join(dir, backend.name+"-"+tc.name)
				u, err := runIn(t, reslimit.Limits{MaxFileSize: limit, Timeout: time.Minute}, nil, func(ctx context.Context) error {
					return reslimitexec.Run(ctx, tc.cmd(path), backend.opts...)
				})
				le := limitErr(t, err, reslimit.FileSize)
				fi, serr := os.Stat(path)
				if serr != nil {
					t.Fatal(serr)
				}
				t.Logf("%v; refusals %d; file %d bytes", le, u.Refusals, fi.Size())
				if le.Limit != limit || u.Refusals != 1 || fi.Size() != limit {
					t.Fatalf("error %v, refusals %d, file %d: want the limit %d, one refusal, the file at the limit", le, u.Refusals, fi.Size(), limit)
				}
			})
		}
	}
	// No false alarm: a Go child writing exactly MaxFileSize bytes.
	t.Run("go at the limit", func(t *testing.T) {
		path := filepath.Join(dir, "exact")
		_, err := runIn(t, reslimit.Limits{MaxFileSize: limit, Timeout: time.Minute}, nil, func(ctx context.Context) error {
			return reslimitexec.Run(ctx, exec.Command(goWriter, path, strconv.Itoa(limit)))
		})
		if err != nil {
			t.Fatalf("writing exactly the limit: %v", err)
		}
	})
	// And a Go child without a file limit is not counted (nothing to
	// report): its EFBIG under an rlimit of its caller's is its own.
	t.Run("no limit", func(t *testing.T) {
		err := reslimitexec.Run(context.Background(), exec.Command(goWriter, filepath.Join(dir, "nolimit"), strconv.Itoa(limit)))
		var le *reslimit.LimitError
		if errors.As(err, &le) || err != nil {
			t.Fatalf("no tracker: %v", err)
		}
	})
}
