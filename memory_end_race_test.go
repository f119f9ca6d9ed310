package reslimit

import (
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// Mixed sizes: TrackMemory/guards racing End must leave the account holding nothing.
func TestMemoryRacesWithEndMixedSizes(t *testing.T) {
	a := newAcct(t, AccountLimits{})
	for trial := 0; trial < 3000; trial++ {
		tr, err := a.Begin(Unlimited())
		require.NoError(t, err)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				<-start
				for i := 0; i < 20; i++ {
					switch g {
					case 0:
						if guard, err := tr.AcquireMemory(1); err == nil {
							runtime.Gosched()
							guard.Release()
						}
					default:
						_ = tr.TrackMemory(int64(g + 1))
					}
				}
			}(g)
		}
		close(start)
		runtime.Gosched()
		tr.End()
		wg.Wait()
		require.Equal(t, int64(0), a.Stats().MemoryBytes, "trial %d: account holds memory of an ended run", trial)
	}
}
