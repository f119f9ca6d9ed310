package reslimit

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit/internal/threadcpu"
)

// A tenant's CPU quota is watched as closely as a run's own limit: four
// runs spinning at once on a 200 ms quota overshoot it by a bounded
// amount (about 10 ms per thread running, plus how late timers fire on a
// loaded machine; 150 ms is a generous bound here — before the tenant was
// sampled per account, each run overshot by up to 250 ms), and every run
// is stopped with the tenant's CPUTime *LimitError.
func TestTenantCPUQuotaOvershootIsBounded(t *testing.T) {
	if !threadcpu.Supported {
		t.Skip("needs thread CPU clocks")
	}
	const quota = 200 * time.Millisecond
	a := newAcct(t, AccountLimits{MaxCPUTime: quota})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := Run(context.Background(), Unlimited(), spinUntilStopped, WithAccount(a))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		var le *LimitError
		require.ErrorAs(t, err, &le)
		require.Equal(t, CPUTime, le.Resource)
		require.Equal(t, a.Name(), le.Tenant)
	}
	over := a.Stats().CPUTime - quota
	t.Logf("tenant CPU %v, overshoot %v", a.Stats().CPUTime, over)
	require.Less(t, over, 150*time.Millisecond)
}
