package reslimit_test

import (
	"fmt"

	"github.com/reslimit/reslimit"
)

// A monitor polled by hand: a tool climbs past the warning threshold, then
// hits its limit and has a request refused; a tenant runs out of
// evaluations. Each crossing is reported once.
func ExampleMonitor_Poll() {
	m, err := reslimit.NewMonitor(reslimit.MonitorConfig{WarningThreshold: 0.8})
	if err != nil {
		panic(err)
	}

	tool, _ := reslimit.NewTracker(reslimit.Limits{MaxOperations: 100})
	defer tool.End()
	acme, _ := reslimit.NewAccount("acme", reslimit.AccountLimits{MaxEvaluations: 2})
	_ = m.Register("search_tool", tool)
	_ = m.Register("tenant/acme", acme)

	_ = tool.TrackOperations(85) // 85% of the limit
	m.Poll()
	m.Poll() // no new crossing: no new event

	_ = tool.TrackOperations(15) // at the limit: allowed
	err = tool.TrackOperation()  // over the limit: refused
	fmt.Println("refused:", err != nil)
	for range 3 { // the third run is refused
		if run, err := acme.Begin(reslimit.Limits{}); err == nil {
			run.End()
		}
	}
	m.Poll()

	m.Stop() // closes Events; what was sent can still be read
	for ev := range m.Events() {
		fmt.Printf("%s %s %s used=%d limit=%d refusals=%d\n",
			ev.Component, ev.Resource, ev.Kind, ev.Used, ev.Limit, ev.Refusals)
	}
	st := m.Stats()
	fmt.Println("warnings:", st.Warnings, "limits exceeded:", st.LimitsExceeded)
	// Output:
	// refused: true
	// search_tool operations high_usage used=85 limit=100 refusals=0
	// search_tool operations limit_exceeded used=100 limit=100 refusals=1
	// tenant/acme evaluations high_usage used=2 limit=2 refusals=0
	// tenant/acme evaluations limit_exceeded used=2 limit=2 refusals=1
	// warnings: 2 limits exceeded: 2
}
