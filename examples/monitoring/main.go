// Command monitoring shows a reslimit.Monitor watching a few long-lived
// components and tenants while they climb towards their limits. The
// monitor's events are logged through log/slog as they arrive; the program
// stops by itself after about two seconds.
//
//	go run ./examples/monitoring
package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/reslimit/reslimit"
)

const mib = 1 << 20

func main() {
	if err := run(); err != nil {
		slog.Error("monitoring example failed", "err", err)
		os.Exit(1)
	}
}

func run() error {
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()

	m, err := newMonitor()
	if err != nil {
		return err
	}
	search, runner, err := newComponents()
	if err != nil {
		return err
	}
	defer search.End()
	defer runner.End()
	// Two tenants with cumulative quotas.
	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{MaxTotalOperations: 3000, MaxEvaluations: 150})
	if err != nil {
		return err
	}
	acme, globex := ledger.Account("acme"), ledger.Account("globex")
	if err := register(m, search, runner, ledger); err != nil {
		return err
	}

	consumer := logEvents(log, m)
	if err := m.Start(ctx); err != nil {
		return err
	}
	work(ctx, search, runner, acme, globex)
	m.Poll() // a last check before stopping
	m.Stop() // waits for the polling goroutine, then closes Events
	consumer.Wait()

	logStats(log, m.Stats())
	return nil
}

// newMonitor watches at a warning threshold of 80%, every 50ms.
func newMonitor() (*reslimit.Monitor, error) {
	return reslimit.NewMonitor(reslimit.MonitorConfig{
		WarningThreshold: 0.8,
		CheckInterval:    50 * time.Millisecond,
		// The process backstop: the Go runtime's memory against 1 GiB.
		WatchProcess:       true,
		ProcessMemoryLimit: 1024 * mib,
	})
}

// newComponents makes two long-lived components, each with its own tracker.
func newComponents() (search, runner *reslimit.Tracker, err error) {
	search, err = reslimit.NewTracker(reslimit.Limits{MaxOperations: 2000, MaxMemoryBytes: 64 * mib})
	if err != nil {
		return nil, nil, err
	}
	runner, err = reslimit.NewTracker(reslimit.Limits{MaxConcurrent: 4})
	if err != nil {
		search.End()
		return nil, nil, err
	}
	return search, runner, nil
}

// register puts the two components and every tenant of the ledger under
// the monitor's watch.
func register(m *reslimit.Monitor, search, runner *reslimit.Tracker, ledger *reslimit.Ledger) error {
	for name, src := range map[string]reslimit.Source{
		"search_tool": search,
		"code_runner": runner,
	} {
		if err := m.Register(name, src); err != nil {
			return err
		}
	}
	// Every tenant of the ledger, as "tenant/acme", "tenant/globex", ...
	return m.RegisterLedger("tenant/", ledger)
}

// logEvents logs the monitor's events as they arrive, until Stop closes
// the channel; the returned group is done when the last one is logged.
func logEvents(log *slog.Logger, m *reslimit.Monitor) *sync.WaitGroup {
	var consumer sync.WaitGroup
	consumer.Go(func() {
		for ev := range m.Events() {
			level := slog.LevelInfo
			switch ev.Kind {
			case reslimit.HighUsage:
				level = slog.LevelWarn
			case reslimit.LimitExceeded:
				level = slog.LevelError
			}
			log.LogAttrs(context.Background(), level, "monitor event", slog.Any("event", ev))
		}
	})
	return &consumer
}

// work runs the two components and the two tenants, acme with bigger runs
// than globex, until ctx ends.
func work(ctx context.Context, search, runner *reslimit.Tracker, acme, globex *reslimit.Account) {
	var work sync.WaitGroup
	work.Go(func() { searchTool(ctx, search) })
	work.Go(func() { codeRunner(ctx, runner) })
	work.Go(func() { tenant(ctx, acme, 40) })
	work.Go(func() { tenant(ctx, globex, 15) })
	work.Wait()
}

// logStats logs the monitor's statistics at the end.
func logStats(log *slog.Logger, st reslimit.MonitorStats) {
	log.Info("monitor statistics",
		"components", st.Components,
		"polls", st.Polls,
		"warnings", st.Warnings,
		"limits_exceeded", st.LimitsExceeded,
		"recoveries", st.Recoveries,
		"dropped_events", st.DroppedEvents,
		"total_operations", st.TotalOperations,
		"process_memory_bytes", st.PerComponent["process"].MemoryBytes,
	)
}

// tick calls fn every 10ms until ctx ends.
func tick(ctx context.Context, fn func(i int)) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn(i)
		}
	}
}

// searchTool declares growing buffers and counts its operations until it
// is refused, then frees most of its memory.
func searchTool(ctx context.Context, t *reslimit.Tracker) {
	var held int64
	opsRefused, memRefused := false, false
	tick(ctx, func(i int) {
		switch {
		case i < 120:
			if !opsRefused && t.TrackOperations(20) != nil {
				opsRefused = true // the 2000 operations are used up
			}
			if !memRefused {
				if t.TrackMemory(mib) != nil {
					memRefused = true // 64 MiB held
				} else {
					held += mib
				}
			}
		case i == 120:
			_ = t.ReleaseMemory(held - 8*mib) // back to 8 MiB: recovered
			held = 8 * mib
		}
	})
}

// codeRunner takes one more sandbox slot every 100ms until it is refused
// (the limit is 4), then gives them all back.
func codeRunner(ctx context.Context, t *reslimit.Tracker) {
	var guards []reslimit.Guard
	defer func() {
		for i := range guards {
			guards[i].Release()
		}
	}()
	refused := false
	tick(ctx, func(i int) {
		switch {
		case i%10 == 0 && i < 100 && !refused:
			g, err := t.TryAcquireSlot()
			if err != nil {
				refused = true
				return
			}
			guards = append(guards, g)
		case i == 100:
			for i := range guards {
				guards[i].Release()
			}
			guards = guards[:0]
		}
	})
}

// tenant starts one run for the account every 10ms, each counting ops
// operations, and backs off once the account is exhausted (after the
// refusal that exhausted it).
func tenant(ctx context.Context, acct *reslimit.Account, ops int64) {
	tick(ctx, func(int) {
		if _, ok := acct.Exhausted(); ok {
			return
		}
		_, err := reslimit.Run(ctx, reslimit.Limits{}, func(ctx context.Context) error {
			return reslimit.FromContext(ctx).TrackOperations(ops)
		}, reslimit.WithAccount(acct))
		var le *reslimit.LimitError
		if err != nil && !errors.As(err, &le) && ctx.Err() == nil {
			slog.Error("run failed", "tenant", acct.Name(), "err", err)
		}
	})
}
