module github.com/reslimit/reslimit/e2e

go 1.26.8

replace (
	github.com/reslimit/reslimit => ../
	github.com/reslimit/reslimit/contrib/grpc => ../contrib/grpc
	github.com/reslimit/reslimit/contrib/prometheus => ../contrib/prometheus
	github.com/reslimit/reslimit/contrib/redisstore => ../contrib/redisstore
	github.com/reslimit/reslimit/contrib/starlark => ../contrib/starlark
	github.com/reslimit/reslimit/contrib/wazero => ../contrib/wazero
)

require (
	github.com/prometheus/client_golang v1.25.0
	github.com/redis/go-redis/v9 v9.23.0
	github.com/reslimit/reslimit v0.0.0-00010101000000-000000000000
	github.com/reslimit/reslimit/contrib/grpc v0.0.0-00010101000000-000000000000
	github.com/reslimit/reslimit/contrib/prometheus v0.0.0-00010101000000-000000000000
	github.com/reslimit/reslimit/contrib/redisstore v0.0.0-00010101000000-000000000000
	github.com/reslimit/reslimit/contrib/starlark v0.0.0-00010101000000-000000000000
	github.com/reslimit/reslimit/contrib/wazero v0.0.0-00010101000000-000000000000
	github.com/tetratelabs/wazero v1.12.0
	go.opentelemetry.io/otel v1.47.0
	go.opentelemetry.io/otel/sdk/metric v1.47.0
	go.starlark.net v0.0.0-20260908191801-89a6a09411d5
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/go-logr/logr v1.4.4 // indirect
	github.com/go-logr/stdr v1.2.2 // indirect
	github.com/google/uuid v1.6.0 // indirect
	go.opentelemetry.io/auto/sdk v1.2.1 // indirect
	go.opentelemetry.io/otel/log v1.47.0 // indirect
	go.opentelemetry.io/otel/metric v1.47.0 // indirect
	go.opentelemetry.io/otel/sdk v1.47.0 // indirect
	go.opentelemetry.io/otel/trace v1.47.0 // indirect
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	github.com/reslimit/reslimit/contrib/otel v0.0.0-00010101000000-000000000000
	go.uber.org/atomic v1.12.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	golang.org/x/time v0.16.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261123191846-1e707ab9fbc2 // indirect
)

replace github.com/reslimit/reslimit/contrib/otel => ../contrib/otel
