module github.com/reslimit/reslimit/bench

go 1.26.8

require (
	github.com/go-redis/redis_rate/v10 v10.0.1
	github.com/redis/go-redis/v9 v9.23.0
	github.com/reslimit/reslimit v0.0.0
	github.com/reslimit/reslimit/contrib/redisstore v0.0.0
)

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	go.uber.org/atomic v1.12.0 // indirect
	golang.org/x/time v0.16.0 // indirect
)

require (
	github.com/bits-and-blooms/bitset v1.24.4 // indirect
	github.com/failsafe-go/failsafe-go v0.9.8
	golang.org/x/sys v0.49.0 // indirect
)

replace github.com/reslimit/reslimit => ../

replace github.com/reslimit/reslimit/contrib/redisstore => ../contrib/redisstore
