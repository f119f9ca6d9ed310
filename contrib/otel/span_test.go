package reslimitotel_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/reslimit/reslimit"
	reslimitotel "github.com/reslimit/reslimit/contrib/otel"
)

// tracer returns a tracer whose ended spans rec records, sampling as s.
func tracer(t *testing.T, s sdktrace.Sampler) (*tracetest.SpanRecorder, func(ctx context.Context) (context.Context, func())) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(s))
	t.Cleanup(func() { require.NoError(t, tp.Shutdown(context.Background())) })
	start := func(ctx context.Context) (context.Context, func()) {
		ctx, span := tp.Tracer("test").Start(ctx, "tool")
		return ctx, func() { span.End() }
	}
	return rec, start
}

// A run's Usage as attributes of the span in its context: every figure,
// with its value, 0 included.
func TestRecordUsage(t *testing.T) {
	rec, start := tracer(t, sdktrace.AlwaysSample())
	ledger := mustLedger(t, reslimit.AccountLimits{})
	ctx, end := start(context.Background())
	u, err := reslimit.Run(ctx, reslimit.Limits{}, func(ctx context.Context) error {
		tr := reslimit.FromContext(ctx)
		if err := tr.TrackOperations(7); err != nil {
			return err
		}
		if err := tr.TrackCall(); err != nil {
			return err
		}
		if err := tr.TrackMemory(4096); err != nil {
			return err
		}
		tr.ReleaseMemory(4096)
		if err := tr.CheckFileSize(100); err != nil {
			return err
		}
		return tr.AddCPUTime(250 * time.Millisecond)
	}, reslimit.WithAccount(ledger.Account("acme")))
	require.NoError(t, err)
	reslimitotel.RecordUsage(ctx, u)
	end()

	spans := rec.Ended()
	require.Len(t, spans, 1)
	got := map[attribute.Key]attribute.Value{}
	for _, kv := range spans[0].Attributes() {
		got[kv.Key] = kv.Value
	}
	require.Positive(t, u.CPUTime)
	require.Positive(t, u.WallTime)
	assert.Equal(t, map[attribute.Key]attribute.Value{
		reslimitotel.AttrRunOperations:  attribute.Int64Value(7),
		reslimitotel.AttrRunCalls:       attribute.Int64Value(1),
		reslimitotel.AttrRunCPUTime:     attribute.Float64Value(u.CPUTime.Seconds()),
		reslimitotel.AttrRunWallTime:    attribute.Float64Value(u.WallTime.Seconds()),
		reslimitotel.AttrRunTotalMemory: attribute.Int64Value(4096),
		reslimitotel.AttrRunPeakMemory:  attribute.Int64Value(4096),
		reslimitotel.AttrRunLargestFile: attribute.Int64Value(100),
		reslimitotel.AttrRunRefusals:    attribute.Int64Value(0),
	}, got)
	assert.GreaterOrEqual(t, u.CPUTime, 250*time.Millisecond, "the run's CPU time includes what it added")
}

// A span that is not recording, no span, or a nil context: nothing
// happens, and nothing is allocated.
func TestRecordUsageNotRecording(t *testing.T) {
	rec, start := tracer(t, sdktrace.NeverSample())
	ctx, end := start(context.Background())
	u := reslimit.Usage{Operations: 3}
	allocs := testing.AllocsPerRun(100, func() {
		reslimitotel.RecordUsage(ctx, u)
		reslimitotel.RecordUsage(context.Background(), u)
		reslimitotel.RecordUsage(nil, u) // a nil context is allowed
	})
	end()
	assert.Zero(t, allocs)
	assert.Empty(t, rec.Ended(), "a span not sampled is not recorded")
}
