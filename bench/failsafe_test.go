// Package bench compares reslimit with other libraries. It is a separate
// module so that the core module does not depend on them; see
// ../BENCHMARKS.md for the command and the numbers.
package bench

import (
	"context"
	"testing"
	"time"

	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/bulkhead"
	"github.com/failsafe-go/failsafe-go/timeout"

	"github.com/reslimit/reslimit"
)

const (
	maxConcurrent = 100 // never reached: RunParallel starts GOMAXPROCS goroutines
	timeLimit     = 10 * time.Second
)

// work is the trivial function every variant runs.
func work(_ context.Context, in int) (int, error) { return in + 1, nil }

// call is one call of a limited function.
type call func(ctx context.Context, in int) (int, error)

// reslimitCall wraps work with reslimit.Limit.
func reslimitCall(l reslimit.Limits) call { return reslimit.Limit(work, l) }

// failsafeGet is the cheapest way to run work through failsafe-go: an
// executor built once, no per-call context (the executor's own
// context.Background), and Get, so the function sees no execution context.
func failsafeGet(policies ...failsafe.Policy[int]) call {
	ex := failsafe.With(policies...)
	return func(ctx context.Context, in int) (int, error) {
		return ex.Get(func() (int, error) { return work(ctx, in) })
	}
}

// failsafeExec is the like-for-like use: the caller's context goes in with
// WithContext and the function gets the execution's context (cancelled by
// the timeout) from GetWithExecution, as a function wrapped by
// reslimit.Limit does.
func failsafeExec(policies ...failsafe.Policy[int]) call {
	ex := failsafe.With(policies...)
	return func(ctx context.Context, in int) (int, error) {
		return ex.WithContext(ctx).GetWithExecution(func(e failsafe.Execution[int]) (int, error) {
			return work(e.Context(), in)
		})
	}
}

// BenchmarkPolicy compares reslimit.Limit with the same policy in
// failsafe-go: a bulkhead (MaxConcurrent), a timeout, and both.
func BenchmarkPolicy(b *testing.B) {
	type variant struct {
		lib string
		f   call
	}
	groups := []struct {
		policy   string
		variants []variant
	}{
		{"bulkhead", []variant{
			{"reslimit", reslimitCall(reslimit.Limits{MaxConcurrent: maxConcurrent})},
			{"failsafe-Get", failsafeGet(bulkhead.New[int](maxConcurrent))},
			{"failsafe-GetWithExecution", failsafeExec(bulkhead.New[int](maxConcurrent))},
		}},
		{"timeout", []variant{
			{"reslimit", reslimitCall(reslimit.Limits{Timeout: timeLimit})},
			{"failsafe-Get", failsafeGet(timeout.New[int](timeLimit))},
			{"failsafe-GetWithExecution", failsafeExec(timeout.New[int](timeLimit))},
		}},
		{"both", []variant{
			{"reslimit", reslimitCall(reslimit.Limits{MaxConcurrent: maxConcurrent, Timeout: timeLimit})},
			{"failsafe-Get", failsafeGet(bulkhead.New[int](maxConcurrent), timeout.New[int](timeLimit))},
			{"failsafe-GetWithExecution", failsafeExec(bulkhead.New[int](maxConcurrent), timeout.New[int](timeLimit))},
		}},
	}
	for _, g := range groups {
		for _, v := range g.variants {
			b.Run(g.policy+"/"+v.lib+"/serial", func(b *testing.B) {
				b.ReportAllocs()
				ctx := context.Background()
				i := 0
				for b.Loop() {
					out, err := v.f(ctx, i)
					if err != nil {
						b.Fatal(err)
					}
					i = out
				}
			})
			b.Run(g.policy+"/"+v.lib+"/parallel", func(b *testing.B) {
				b.ReportAllocs()
				ctx := context.Background()
				b.RunParallel(func(pb *testing.PB) {
					i := 0
					for pb.Next() {
						out, err := v.f(ctx, i)
						if err != nil {
							b.Error(err)
							return
						}
						i = out
					}
				})
			})
		}
	}
}
