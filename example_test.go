package reslimit_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/reslimit/reslimit"
)

func ExampleNewTracker() {
	tr, err := reslimit.NewTracker(reslimit.Limits{MaxOperations: 3})
	if err != nil {
		panic(err)
	}
	defer tr.End()
	for i := 1; i <= 4; i++ {
		if err := tr.TrackOperation(); err != nil {
			fmt.Println("operation", i, "refused:", err)
			fmt.Println("is ErrLimitExceeded:", errors.Is(err, reslimit.ErrLimitExceeded))
		}
	}
	fmt.Println("counted:", tr.Usage().Operations)
	// Output:
	// operation 4 refused: reslimit: operations limit 3 exceeded: used 3, requested 1
	// is ErrLimitExceeded: true
	// counted: 3
}

func ExampleTracker_AcquireMemory() {
	tr, _ := reslimit.NewTracker(reslimit.Limits{MaxMemoryBytes: 1 << 20})
	defer tr.End()

	load := func(size int64) error {
		g, err := tr.AcquireMemory(size)
		if err != nil {
			return err
		}
		defer g.Release() // the bytes come back when load returns
		fmt.Println("holding", tr.Usage().MemoryBytes, "bytes")
		return nil
	}
	_ = load(600 << 10)
	_ = load(600 << 10) // fits again: the first 600 KiB were released
	err := load(2 << 20)
	var le *reslimit.LimitError
	if errors.As(err, &le) {
		fmt.Println("refused:", le.Resource, "limit", le.Limit, "requested", le.Requested)
	}
	fmt.Println("peak:", tr.Usage().PeakMemoryBytes)
	// Output:
	// holding 614400 bytes
	// holding 614400 bytes
	// refused: memory limit 1048576 requested 2097152
	// peak: 614400
}

func ExampleRun() {
	usage, err := reslimit.Run(context.Background(), reslimit.Strict(), func(ctx context.Context) error {
		tr := reslimit.FromContext(ctx)
		for i := 0; i < 20_000; i++ {
			if err := tr.TrackOperation(); err != nil {
				return err
			}
		}
		return nil
	})
	fmt.Println(err)
	fmt.Println("operations:", usage.Operations)
	// Output:
	// reslimit: operations limit 10000 exceeded: used 10000, requested 1
	// operations: 10000
}

func ExampleLimit() {
	wordCount := func(ctx context.Context, text string) (int, error) {
		tr := reslimit.FromContext(ctx)
		words := 0
		for i := range text {
			if err := tr.TrackOperation(); err != nil {
				return 0, err
			}
			if text[i] == ' ' {
				words++
			}
		}
		return words + 1, nil
	}
	tool := reslimit.Limit(wordCount, reslimit.Limits{MaxOperations: 20})

	n, err := tool(context.Background(), "the quick brown fox")
	fmt.Println(n, err)
	_, err = tool(context.Background(), "jumps over the lazy dog again")
	fmt.Println(err)
	// Output:
	// 4 <nil>
	// reslimit: operations limit 20 exceeded: used 20, requested 1
}

func ExampleAccount() {
	acct, _ := reslimit.NewAccount("acme", reslimit.AccountLimits{MaxTotalOperations: 250, MaxEvaluations: 3})
	job := func(ctx context.Context) error {
		return reslimit.FromContext(ctx).TrackOperations(100)
	}
	for i := 1; i <= 4; i++ {
		_, err := reslimit.Run(context.Background(), reslimit.Strict(), job, reslimit.WithAccount(acct))
		fmt.Printf("run %d: %v\n", i, err)
	}
	s := acct.Stats()
	fmt.Println("evaluations:", s.Evaluations, "operations:", s.Operations, "exhausted:", s.Exhausted)
	fmt.Println("remaining operations:", s.LimitStatus[reslimit.Operations].Remaining)
	for _, h := range acct.History() {
		fmt.Println("history:", h.Evaluation, h.Operations, h.Err != nil)
	}
	// Output:
	// run 1: <nil>
	// run 2: <nil>
	// run 3: reslimit: tenant "acme" operations limit 250 exceeded: used 200, requested 100
	// run 4: reslimit: tenant "acme" evaluations limit 3 exceeded: used 3, requested 1
	// evaluations: 3 operations: 200 exhausted: true
	// remaining operations: 50
	// history: 1 100 false
	// history: 2 100 false
	// history: 3 0 true
}

func ExampleLedger() {
	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{MaxTotalOperations: 1000})
	if err != nil {
		panic(err)
	}
	tool := reslimit.Limit(func(ctx context.Context, n int64) (struct{}, error) {
		return struct{}{}, reslimit.FromContext(ctx).TrackOperations(n)
	}, reslimit.Strict())

	for _, call := range []struct {
		tenant string
		ops    int64
	}{{"globex", 300}, {"acme", 200}, {"globex", 800}, {"acme", 50}} {
		ctx := reslimit.ContextWithAccount(context.Background(), ledger.Account(call.tenant))
		if _, err := tool(ctx, call.ops); err != nil {
			fmt.Println(call.tenant, "refused:", errors.Is(err, reslimit.ErrLimitExceeded))
		}
	}
	snap := ledger.Snapshot()
	for _, tenant := range ledger.Tenants() {
		s := snap[tenant]
		fmt.Printf("%-7s runs=%d ops=%d remaining=%d\n", tenant, s.Evaluations, s.Operations,
			s.LimitStatus[reslimit.Operations].Remaining)
	}
	// Output:
	// globex refused: true
	// acme    runs=2 ops=250 remaining=750
	// globex  runs=2 ops=300 remaining=700
}
