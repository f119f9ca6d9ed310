package reslimit

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// cpuLast is written with Store by concurrent sampleCPU calls, so it can go
// back; lifeLocked reads it, and a report then has a negative CPUTime.
func TestFleetCPULastGoesBackwards(t *testing.T) {
	store := &negStore{Store: NewMemoryStore()}
	l := newFleetLedger(t, store, "r1", AccountLimits{}, WithSyncInterval(time.Hour))
	tr, _ := l.Account("t").Begin(Unlimited())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					_ = tr.AddCPUTime(time.Microsecond)
				}
			}
		}()
	}
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		_ = l.Sync(context.Background())
		store.mu.Lock()
		n := len(store.neg)
		store.mu.Unlock()
		if n > 0 {
			break
		}
	}
	close(stop)
	wg.Wait()
	tr.End()
	assert.Empty(t, store.neg)
}
