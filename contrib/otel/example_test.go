package reslimitotel_test

import (
	"context"
	"errors"
	"fmt"
	"sort"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/reslimit/reslimit"
	reslimitotel "github.com/reslimit/reslimit/contrib/otel"
)

// ExampleRegister reports a ledger on a MeterProvider whose reader an
// application would hand to an exporter (OTLP, Prometheus, ...); here a
// ManualReader collects once. The tenant may make 1000 operations: it ran
// 250, then asked for 800 more and was refused.
func ExampleRegister() {
	ledger, err := reslimit.NewLedger(reslimit.AccountLimits{MaxTotalOperations: 1000})
	if err != nil {
		panic(err)
	}
	defer ledger.Close(context.Background())
	acme := reslimit.WithAccount(ledger.Account("acme"))
	track := func(n int64) error {
		_, err := reslimit.Run(context.Background(), reslimit.Limits{}, func(ctx context.Context) error {
			return reslimit.FromContext(ctx).TrackOperations(n)
		}, acme)
		return err
	}
	fmt.Println(track(250), errors.Is(track(800), reslimit.ErrLimitExceeded))

	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(context.Background())
	reg, err := reslimitotel.Register(ledger, reslimitotel.WithMeterProvider(provider))
	if err != nil {
		panic(err)
	}
	defer reg.Unregister()

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		panic(err)
	}
	var lines []string
	for _, m := range rm.ScopeMetrics[0].Metrics {
		var points []metricdata.DataPoint[int64]
		switch d := m.Data.(type) {
		case metricdata.Gauge[int64]:
			points = d.DataPoints
		case metricdata.Sum[int64]:
			points = d.DataPoints
		}
		for _, p := range points {
			res, _ := p.Attributes.Value(reslimitotel.AttrResource)
			if res.AsString() == "operations" || m.Name == "reslimit.tenant.evaluations" {
				lines = append(lines, fmt.Sprintf("%s %s %d", m.Name, m.Unit, p.Value))
			}
		}
	}
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Println(l)
	}
	// Output:
	// <nil> true
	// reslimit.tenant.evaluations {evaluation} 2
	// reslimit.tenant.limit.operations {operation} 1000
	// reslimit.tenant.refusals {request} 1
	// reslimit.tenant.remaining.operations {operation} 750
	// reslimit.tenant.run_stops {run} 0
	// reslimit.tenant.usage.operations {operation} 250
}

// ExampleRecordUsage puts a tool's usage on the span of the request that
// ran it.
func ExampleRecordUsage() {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())

	ctx, span := tp.Tracer("example").Start(context.Background(), "search")
	u, err := reslimit.Run(ctx, reslimit.Limits{MaxOperations: 100}, func(ctx context.Context) error {
		return reslimit.FromContext(ctx).TrackOperations(42)
	})
	if err != nil {
		panic(err)
	}
	reslimitotel.RecordUsage(ctx, u)
	span.End()

	for _, kv := range spans.Ended()[0].Attributes() {
		if kv.Key == reslimitotel.AttrRunOperations {
			fmt.Println(kv.Key, kv.Value.AsInt64())
		}
	}
	// Output:
	// reslimit.run.operations 42
}
