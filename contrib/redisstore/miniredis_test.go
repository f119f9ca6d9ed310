package redisstore_test

import (
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/reslimit/reslimit/contrib/redisstore"
	"github.com/reslimit/reslimit/store"
	"github.com/reslimit/reslimit/store/storetest"
)

// TestConformanceMiniredis runs the suite on miniredis, in addition to (not
// instead of) the real server: it needs no server, and its clock is set by
// the test, so the expiry checks run without waiting. Each subtest gets a
// server of its own, whose clock only that subtest moves.
func TestConformanceMiniredis(t *testing.T) {
	type fake struct {
		srv *miniredis.Miniredis
		now time.Time
	}
	var mu sync.Mutex
	servers := map[*testing.T]*fake{}
	storetest.Run(t, storetest.Config{
		New: func(t *testing.T) store.Store {
			f := &fake{srv: miniredis.RunT(t), now: time.Now()}
			f.srv.SetTime(f.now)
			mu.Lock()
			servers[t] = f
			mu.Unlock()
			rdb := redis.NewClient(&redis.Options{Addr: f.srv.Addr()})
			t.Cleanup(func() { _ = rdb.Close() })
			st, err := redisstore.New(rdb)
			if err != nil {
				t.Fatal(err)
			}
			return st
		},
		Advance: func(t *testing.T, d time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			f := servers[t]
			f.now = f.now.Add(d)
			f.srv.SetTime(f.now)
		},
		CPUResolution: time.Microsecond,
	})
}
