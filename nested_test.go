package reslimit

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reslimit/reslimit/internal/threadcpu"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// burnCPU spins until the calling thread has used d of CPU time (or 10 s
// of wall time passed), locked to its thread.
func burnCPU(d time.Duration) {
	start, deadline := threadcpu.Current(), time.Now().Add(10*time.Second)
	for threadcpu.Current()-start < d && time.Now().Before(deadline) {
	}
}

// A tool wrapped with Limit and called inside a run charged to a tenant
// (as behind reslimithttp.Middleware) is billed to that tenant, once,
// whether the tenant also sits in the context or not.
func TestNestedRunIsBilledToTheEnclosingTenant(t *testing.T) {
	tool := Limit(func(ctx context.Context, n int) (int, error) {
		return n, FromContext(ctx).TrackOperations(int64(n))
	}, Strict())
	lazyTool := Limit(func(ctx context.Context, n int) (int, error) {
		tr := FromContext(ctx)
		for i := 0; i < n; i++ {
			if err := tr.TrackOperation(); err != nil {
				return 0, err
			}
		}
		return n, tr.TrackCall()
	}, Unlimited())
	for _, inCtx := range []bool{false, true} {
		a := newAcct(t, AccountLimits{})
		ctx := context.Background()
		if inCtx {
			ctx = ContextWithAccount(ctx, a)
		}
		_, err := Run(ctx, Unlimited(), func(ctx context.Context) error {
			if _, err := tool(ctx, 40); err != nil {
				return err
			}
			_, err := lazyTool(ctx, 2)
			return err
		}, WithAccount(a))
		require.NoError(t, err)
		st := a.Stats()
		assert.Equal(t, int64(42), st.Operations, "tenant in context %v", inCtx)
		assert.Equal(t, int64(1), st.Calls)
		assert.Equal(t, int64(1), st.Evaluations, "a nested call is not a new evaluation")
	}
}

// A child run's limits are the tighter of its own and what its parent has
// left: operations and memory held, per run and per tenant; what the child
// drew and did not use goes back to the parent.
func TestNestedRunDrawsFromItsParent(t *testing.T) {
	_, err := Run(context.Background(), Limits{MaxOperations: 100, MaxMemoryBytes: 1000}, func(ctx context.Context) error {
		parent := FromContext(ctx)
		require.NoError(t, parent.TrackOperations(30))
		_, err := Run(ctx, Limits{MaxOperations: 1000}, func(ctx context.Context) error {
			tr := FromContext(ctx)
			for i := 0; i < 1000; i++ {
				if err := tr.TrackOperation(); err != nil {
					assert.Equal(t, 70, i, "the parent had 70 operations left")
					return err
				}
			}
			return nil
		})
		le := requireLimit(t, err, Operations, 100, 100, 1)
		assert.Empty(t, le.Tenant)
		assert.Equal(t, int64(100), parent.Usage().Operations)

		// Memory held by a child is held by its parent until released.
		_, err = Run(ctx, Unlimited(), func(ctx context.Context) error {
			require.NoError(t, FromContext(ctx).TrackMemory(600))
			requireLimit(t, parent.TrackMemory(500), Memory, 1000, 600, 500)
			return nil
		})
		require.NoError(t, err)
		assert.Equal(t, int64(0), parent.Usage().MemoryBytes, "the child's memory came back at its end")
		require.NoError(t, parent.TrackMemory(500))
		return nil
	})
	require.NoError(t, err)

	// Room a child drew but did not use goes back to the parent.
	_, err = Run(context.Background(), Limits{MaxOperations: 10}, func(ctx context.Context) error {
		_, err := Run(ctx, Unlimited(), func(ctx context.Context) error { return FromContext(ctx).TrackOperations(3) })
		require.NoError(t, err)
		parent := FromContext(ctx)
		assert.Equal(t, int64(3), parent.Usage().Operations)
		return parent.TrackOperations(7)
	})
	require.NoError(t, err)

	// The tenant's quota binds nested runs exactly.
	a := newAcct(t, AccountLimits{MaxTotalOperations: 50})
	var got []error
	_, err = Run(context.Background(), Unlimited(), func(ctx context.Context) error {
		for i := 0; i < 2; i++ {
			_, err := Run(ctx, Strict(), func(ctx context.Context) error { return FromContext(ctx).TrackOperations(40) })
			got = append(got, err)
		}
		return nil
	}, WithAccount(a))
	require.NoError(t, err)
	require.NoError(t, got[0])
	le := requireLimit(t, got[1], Operations, 50, 40, 40)
	assert.Equal(t, a.Name(), le.Tenant)
	assert.Equal(t, int64(40), a.Stats().Operations)
}

// Many child runs on many goroutines draw from one parent's limit: exactly
// the limit is granted, no more, no less.
func TestNestedRunsHoldTheParentLimitExactly(t *testing.T) {
	const limit = 10_000
	for _, withAccount := range []bool{false, true} {
		var opts []Option
		var a *Account
		if withAccount {
			a = newAcct(t, AccountLimits{MaxTotalOperations: limit})
			opts = append(opts, WithAccount(a))
		}
		var granted atomic.Int64
		_, err := Run(context.Background(), Limits{MaxOperations: limit}, func(ctx context.Context) error {
			var wg sync.WaitGroup
			for g := 0; g < 8; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						_, err := Run(ctx, Limits{MaxOperations: 700}, func(ctx context.Context) error {
							tr := FromContext(ctx)
							for {
								if err := tr.TrackOperation(); err != nil {
									return err
								}
								granted.Add(1)
							}
						})
						var le *LimitError
						require.ErrorAs(t, err, &le)
						if le.Limit == limit {
							return // the parent's (or tenant's) limit
						}
					}
				}()
			}
			wg.Wait()
			assert.Equal(t, int64(limit), FromContext(ctx).Usage().Operations)
			return nil
		}, opts...)
		require.NoError(t, err)
		require.Equal(t, int64(limit), granted.Load(), "account %v", withAccount)
		if a != nil {
			require.Equal(t, int64(limit), a.Stats().Operations)
		}
	}
}

// CPU a child run uses on another goroutine, in its Go helpers, or adds
// with AddCPUTime is the parent's CPU too, and so its tenant's.
func TestNestedRunCPUIsChargedToTheParent(t *testing.T) {
	if !threadcpu.Supported {
		t.Skip("needs thread CPU clocks")
	}
	a := newAcct(t, AccountLimits{})
	tool := Limit(func(ctx context.Context, d time.Duration) (int, error) {
		tr := FromContext(ctx)
		done := make(chan struct{})
		tr.Go(func() { burnCPU(d); close(done) })
		burnCPU(d)
		<-done
		return 0, tr.AddCPUTime(time.Second)
	}, Limits{MaxCPUTime: time.Hour})
	_, err := Run(context.Background(), Unlimited(), func(ctx context.Context) error {
		errc := make(chan error, 1)
		go func() { _, err := tool(ctx, 30*time.Millisecond); errc <- err }()
		return <-errc
	}, WithAccount(a))
	require.NoError(t, err)
	cpu := a.Stats().CPUTime
	assert.GreaterOrEqual(t, cpu, time.Second+60*time.Millisecond, "the tool's CPU on two threads plus what it added")
	assert.Less(t, cpu, time.Second+time.Second, "counted once")
}

// A run started with the context of a run that has ended is refused: it
// could not be charged to anyone.
func TestNestedRunAfterParentEndedIsRefused(t *testing.T) {
	for _, l := range []Limits{Unlimited(), {MaxCPUTime: time.Hour}} {
		var kept context.Context
		_, err := Run(context.Background(), l, func(ctx context.Context) error {
			kept = ctx
			FromContext(ctx).TrackOperation()
			return nil
		})
		require.NoError(t, err)
		ran := false
		_, err = Run(kept, Unlimited(), func(context.Context) error { ran = true; return nil })
		require.True(t, errors.Is(err, ErrClosed), "%v", err)
		require.False(t, ran)
	}
}
