package reslimitotel

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/reslimit/reslimit"
)

// The span attributes of RecordUsage, one per figure of a run's Usage.
const (
	// AttrRunOperations is Usage.Operations, int64.
	AttrRunOperations = attribute.Key("reslimit.run.operations")
	// AttrRunCalls is Usage.Calls, int64.
	AttrRunCalls = attribute.Key("reslimit.run.function_calls")
	// AttrRunCPUTime is Usage.CPUTime, float64 seconds.
	AttrRunCPUTime = attribute.Key("reslimit.run.cpu_time")
	// AttrRunWallTime is Usage.WallTime, float64 seconds.
	AttrRunWallTime = attribute.Key("reslimit.run.wall_time")
	// AttrRunTotalMemory is Usage.TotalMemoryBytes, int64 bytes.
	AttrRunTotalMemory = attribute.Key("reslimit.run.total_memory")
	// AttrRunPeakMemory is Usage.PeakMemoryBytes, int64 bytes.
	AttrRunPeakMemory = attribute.Key("reslimit.run.peak_memory")
	// AttrRunLargestFile is Usage.LargestFileBytes, int64 bytes.
	AttrRunLargestFile = attribute.Key("reslimit.run.largest_file")
	// AttrRunRefusals is Usage.Refusals (requests refused by the run's
	// own limits), int64.
	AttrRunRefusals = attribute.Key("reslimit.run.refusals")
)

// usageAttrs are the attributes of a Usage, in the order RecordUsage sets
// them.
var usageAttrs = []struct {
	key  attribute.Key
	read func(*reslimit.Usage) attribute.Value
}{
	{AttrRunOperations, func(u *reslimit.Usage) attribute.Value { return attribute.Int64Value(u.Operations) }},
	{AttrRunCalls, func(u *reslimit.Usage) attribute.Value { return attribute.Int64Value(u.Calls) }},
	{AttrRunCPUTime, func(u *reslimit.Usage) attribute.Value { return seconds(u.CPUTime) }},
	{AttrRunWallTime, func(u *reslimit.Usage) attribute.Value { return seconds(u.WallTime) }},
	{AttrRunTotalMemory, func(u *reslimit.Usage) attribute.Value { return attribute.Int64Value(u.TotalMemoryBytes) }},
	{AttrRunPeakMemory, func(u *reslimit.Usage) attribute.Value { return attribute.Int64Value(u.PeakMemoryBytes) }},
	{AttrRunLargestFile, func(u *reslimit.Usage) attribute.Value { return attribute.Int64Value(u.LargestFileBytes) }},
	{AttrRunRefusals, func(u *reslimit.Usage) attribute.Value { return attribute.Int64Value(u.Refusals) }},
}

func seconds(d time.Duration) attribute.Value { return attribute.Float64Value(d.Seconds()) }

// RecordUsage sets u, the Usage of a finished run (what reslimit.Run or
// Tracker.End returned), as attributes of the span in ctx
// (trace.SpanFromContext): the AttrRun keys above, every one of them, 0
// included. It does nothing when that span is not recording (no span, or
// one not sampled), and costs no allocation then. Call it before the span
// ends; it is as safe for concurrent use as the span's SetAttributes.
//
//	u, err := reslimit.Run(ctx, limits, tool, reslimit.WithAccount(acct))
//	reslimitotel.RecordUsage(ctx, u)
func RecordUsage(ctx context.Context, u reslimit.Usage) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		setUsage(span, u)
	}
}

// setUsage is RecordUsage for a recording span. (Apart, so that u, whose
// address the table's functions take, is moved to the heap only here.)
func setUsage(span trace.Span, u reslimit.Usage) {
	kvs := make([]attribute.KeyValue, len(usageAttrs))
	for i, a := range usageAttrs {
		kvs[i] = attribute.KeyValue{Key: a.key, Value: a.read(&u)}
	}
	span.SetAttributes(kvs...)
}
