package threadcpu

import (
	"runtime"
	"testing"
	"time"
)

func spin(d time.Duration) {
	start := Current()
	for Current()-start < d {
	}
}

func TestThreadClockCountsCPUNotSleep(t *testing.T) {
	if !Supported {
		t.Skip("per-thread CPU clocks are not supported on " + runtime.GOOS)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c, ok := Self()
	if !ok {
		t.Fatal("Self failed on a supported platform")
	}
	before, err := c.Read()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the behaviour under test: a sleeping thread uses no CPU
	afterSleep, _ := c.Read()
	if d := afterSleep - before; d > 20*time.Millisecond {
		t.Fatalf("sleeping 50ms used %v of CPU", d)
	}
	spin(30 * time.Millisecond)
	afterSpin, _ := c.Read()
	if d := afterSpin - afterSleep; d < 30*time.Millisecond {
		t.Fatalf("spinning 30ms of CPU read as %v", d)
	}
}

func TestReadFromAnotherGoroutine(t *testing.T) {
	if !Supported {
		t.Skip("per-thread CPU clocks are not supported on " + runtime.GOOS)
	}
	clk := make(chan Clock)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		c, _ := Self()
		spin(20 * time.Millisecond)
		clk <- c
		<-done
	}()
	c := <-clk
	d, err := c.Read()
	close(done)
	if err != nil {
		t.Fatal(err)
	}
	if d < 20*time.Millisecond {
		t.Fatalf("read %v from outside, want >= 20ms", d)
	}
}
