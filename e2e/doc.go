// Package e2e holds the end-to-end test of reslimit composed the way its
// README tells users to build a service: two replicas of an HTTP service
// (reslimithttp.Middleware) on store-backed ledgers sharing one real
// redis-server (contrib/redisstore), with billing periods closing on a
// schedule, tools wrapped with reslimit.Limit that nest, run a child
// process (reslimitexec), a Starlark script (contrib/starlark) and a
// WebAssembly guest (contrib/wazero), and tenants with quotas and rates;
// gRPC (contrib/grpc) and OpenTelemetry metrics (contrib/otel) on the same
// fleet.
//
// The tests assert that the bill is exact: per tenant and per period, the
// sum of the replicas' invoice lines equals the store's totals, which equal
// what the load generator was granted; and that an operator sees the runs
// stopped by their own limits and the billing periods, exactly, in
// AccountStats, Monitor events, Prometheus and the status page's snapshot.
// They need a disposable redis-server:
//
//	redis-server --port 6390 --bind 127.0.0.1 --save '' --daemonize yes
//	RESLIMIT_REDIS_ADDR=127.0.0.1:6390 go test -race ./...
//
// Without RESLIMIT_REDIS_ADDR they skip, unless RESLIMIT_REQUIRE_REDIS is
// set (then they fail). The package has no code outside its tests.
package e2e
