package redisstore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/contrib/redisstore"
	"github.com/reslimit/reslimit/store"
	"github.com/reslimit/reslimit/store/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// addrEnv names the variable that points the tests at a real Redis server.
const addrEnv = "RESLIMIT_REDIS_ADDR"

// client returns a client of the Redis server at $RESLIMIT_REDIS_ADDR,
// closed when t ends, or skips t when the variable is unset.
func client(tb testing.TB) *redis.Client {
	tb.Helper()
	addr := os.Getenv(addrEnv)
	if addr == "" {
		tb.Skip(addrEnv + " is not set: skipping the tests on a real Redis server (set it to host:port of a disposable redis-server)")
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	tb.Cleanup(func() { _ = rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(tb, rdb.Ping(ctx).Err(), "Redis at %s=%s", addrEnv, addr)
	return rdb
}

// newStore returns a store on rdb under a random key prefix whose keys are
// deleted when t ends, so tests never see each other's keys.
func newStore(tb testing.TB, rdb *redis.Client, opts ...redisstore.Option) (*redisstore.Store, string) {
	tb.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	prefix := "reslimit-test-" + hex.EncodeToString(b[:])
	st, err := redisstore.New(rdb, append([]redisstore.Option{redisstore.WithKeyPrefix(prefix)}, opts...)...)
	require.NoError(tb, err)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		iter := rdb.Scan(ctx, 0, prefix+":*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if err := iter.Err(); err != nil {
			tb.Errorf("scanning %s:*: %v", prefix, err)
			return
		}
		if len(keys) > 0 {
			if err := rdb.Del(ctx, keys...).Err(); err != nil {
				tb.Errorf("deleting test keys: %v", err)
			}
		}
	})
	return st, prefix
}

func TestConformance(t *testing.T) {
	rdb := client(t)
	storetest.Run(t, storetest.Config{
		New: func(t *testing.T) store.Store {
			st, _ := newStore(t, rdb)
			return st
		},
		LeaseTTL:      200 * time.Millisecond,
		CPUResolution: time.Microsecond,
	})
}

// TestConformanceSmallBatches runs the suite with pipelines of 2 tenants,
// so that requests take several round trips.
func TestConformanceSmallBatches(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	rdb := client(t)
	storetest.Run(t, storetest.Config{
		New: func(t *testing.T) store.Store {
			st, _ := newStore(t, rdb, redisstore.WithMaxBatch(2))
			return st
		},
		CPUResolution: time.Microsecond,
	})
}

func syncOne(t *testing.T, st store.Store, replica string, ts store.TenantSync) store.TenantState {
	t.Helper()
	resp, err := st.Sync(context.Background(), store.SyncRequest{Replica: replica, LeaseTTL: time.Minute,
		Tenants: []store.TenantSync{ts}})
	require.NoError(t, err)
	require.Len(t, resp.Tenants, 1)
	return resp.Tenants[0]
}

// TestNoScript flushes the server's script cache between syncs: the store
// loads the script again and nothing is applied twice.
func TestNoScript(t *testing.T) {
	rdb := client(t)
	st, _ := newStore(t, rdb)
	ctx := context.Background()
	for seq := uint64(1); seq <= 3; seq++ {
		require.NoError(t, rdb.ScriptFlush(ctx).Err())
		resp, err := st.Sync(ctx, store.SyncRequest{Replica: "r", LeaseTTL: time.Minute, Tenants: []store.TenantSync{
			{Tenant: "a", Seq: seq, Used: store.Totals{Operations: 1}, Want: store.Totals{Operations: 5}, Limit: store.Totals{Operations: 100}},
			{Tenant: "b", Seq: seq, Used: store.Totals{Operations: 2}},
			{Tenant: "a", Seq: seq, Used: store.Totals{Operations: 1}}, // retry in the same pipeline
		}})
		require.NoError(t, err, "sync after SCRIPT FLUSH")
		require.Len(t, resp.Tenants, 3)
		assert.Equal(t, int64(seq), resp.Tenants[0].Committed.Operations)
		assert.Equal(t, 5*int64(seq)+1, resp.Tenants[0].Allowance.Operations, "5 granted each time")
		assert.Equal(t, 2*int64(seq), resp.Tenants[1].Committed.Operations)
		assert.Equal(t, resp.Tenants[0], resp.Tenants[2])
	}
	exists, err := rdb.ScriptExists(ctx, redis.NewScript(scriptSource(t)).Hash()).Result()
	require.NoError(t, err)
	assert.Equal(t, []bool{true}, exists, "the script is loaded again")
	tot, err := st.Load(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, store.Totals{Operations: 3}, tot)
}

func scriptSource(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("sync.lua")
	require.NoError(t, err)
	return string(b)
}

// TestLayout checks the documented key layout and values on the server.
func TestLayout(t *testing.T) {
	rdb := client(t)
	st, prefix := newStore(t, rdb)
	ctx := context.Background()
	tenant := "acme"
	syncOne(t, st, "r:1", store.TenantSync{Tenant: tenant, Seq: 7,
		Used: store.Totals{Operations: 3, TotalMemory: 10, CPUTime: 1500 * time.Nanosecond},
		Want: store.Totals{Operations: 10}, Limit: store.Totals{Operations: 100}})
	hash, leases := st.Keys(tenant)
	assert.Equal(t, prefix+":{acme}", hash)
	assert.Equal(t, prefix+":{acme}:leases", leases)
	got, err := rdb.HGetAll(ctx, hash).Result()
	require.NoError(t, err)
	assert.Equal(t, map[string]string{
		"ops": "3", "mem": "10", "cpu_us": "1",
		"ops:r:1": "3", "mem:r:1": "10", "cpu_us:r:1": "1", "cpu_ns:r:1": "500",
		"seq:r:1": "7", "u_ops:r:1": "10", "out_ops": "10",
	}, got)
	ttl, err := rdb.TTL(ctx, hash).Result()
	require.NoError(t, err)
	assert.Equal(t, time.Duration(-1), ttl, "the bill has no TTL")

	now, err := rdb.Time(ctx).Result()
	require.NoError(t, err)
	score, err := rdb.ZScore(ctx, leases, "r:1").Result()
	require.NoError(t, err)
	exp := time.UnixMilli(int64(score))
	assert.WithinDuration(t, now.Add(time.Minute), exp, 5*time.Second, "lease expiry by the server's clock")
}

// TestTenantNames checks that tenant names that hold hash-tag characters
// get keys of their own, with both keys in one Cluster slot.
func TestTenantNames(t *testing.T) {
	unused := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never reached
	defer unused.Close()
	st, err := redisstore.New(unused)
	require.NoError(t, err)
	names := []string{"a", "a}", "}a", "{a}", "a}:leases", "%7D", "a b", "ü"}
	seen := map[string]string{}
	for _, n := range names {
		h, l := st.Keys(n)
		for _, k := range []string{h, l} {
			if other, ok := seen[k]; ok {
				t.Fatalf("tenants %q and %q share key %q", n, other, k)
			}
			seen[k] = n
		}
		assert.Equal(t, hashTag(h), hashTag(l), "%q: keys in one slot", n)
		assert.NotEmpty(t, hashTag(h))
	}

	rdb := client(t)
	st, _ = newStore(t, rdb)
	for i, n := range names {
		syncOne(t, st, "r", store.TenantSync{Tenant: n, Seq: 1, Used: store.Totals{Operations: int64(i + 1)}})
	}
	for i, n := range names {
		tot, err := st.Load(context.Background(), n)
		require.NoError(t, err)
		assert.Equal(t, int64(i+1), tot.Operations, n)
	}
}

// hashTag returns the part of key Redis Cluster hashes.
func hashTag(key string) string {
	if s := strings.IndexByte(key, '{'); s >= 0 {
		if e := strings.IndexByte(key[s+1:], '}'); e > 0 {
			return key[s+1 : s+1+e]
		}
	}
	return key
}

func TestValidation(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never reached
	t.Cleanup(func() { _ = rdb.Close() })

	_, err := redisstore.New(nil)
	assert.ErrorIs(t, err, reslimit.ErrInvalidArgument)
	for _, o := range []redisstore.Option{
		redisstore.WithKeyPrefix(""), redisstore.WithKeyPrefix("a{b}"),
		redisstore.WithTimeout(0), redisstore.WithMaxBatch(0),
	} {
		_, err := redisstore.New(rdb, o)
		assert.ErrorIs(t, err, reslimit.ErrInvalidArgument)
	}
	st, err := redisstore.New(rdb, redisstore.WithTimeout(time.Second), redisstore.WithMaxBatch(10))
	require.NoError(t, err)

	ctx := context.Background()
	good := store.TenantSync{Tenant: "t", Seq: 1}
	bad := []store.SyncRequest{
		{Tenants: []store.TenantSync{good}},
		{Replica: "r", LeaseTTL: -time.Second, Tenants: []store.TenantSync{good}},
		{Replica: "r", Tenants: []store.TenantSync{good, {Seq: 1}}},
		{Replica: "r", Tenants: []store.TenantSync{{Tenant: "t", Used: store.Totals{Operations: -1}}}},
		{Replica: "r", Tenants: []store.TenantSync{{Tenant: "t", Used: store.Totals{CPUTime: -1}}}},
		{Replica: "r", Tenants: []store.TenantSync{{Tenant: "t", Want: store.Totals{Evaluations: -1}}}},
		{Replica: "r", Tenants: []store.TenantSync{{Tenant: "t", Limit: store.Totals{TotalMemory: -1}}}},
	}
	for i, req := range bad {
		_, err := st.Sync(ctx, req)
		assert.ErrorIs(t, err, reslimit.ErrInvalidArgument, "request %d", i)
	}
	_, err = st.Load(ctx, "")
	assert.ErrorIs(t, err, reslimit.ErrInvalidArgument)
}

// TestUnreachable checks that a dead server and a server that never answers
// both give errors within the store's timeout.
func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c // hold it open, never answer
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		for c := range accepted {
			_ = c.Close()
		}
	})
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	require.NoError(t, dead.Close())

	for name, addr := range map[string]string{"silent": ln.Addr().String(), "dead": deadAddr} {
		t.Run(name, func(t *testing.T) {
			// go-redis bounds socket I/O by the context only with
			// ContextTimeoutEnabled; the store's timeout then holds.
			rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ContextTimeoutEnabled: true})
			defer rdb.Close()
			st, err := redisstore.New(rdb, redisstore.WithTimeout(200*time.Millisecond))
			require.NoError(t, err)
			start := time.Now()
			_, err = st.Sync(context.Background(), store.SyncRequest{Replica: "r", LeaseTTL: time.Second,
				Tenants: []store.TenantSync{{Tenant: "t", Seq: 1, Used: store.Totals{Operations: 1}}}})
			require.Error(t, err)
			assert.Less(t, time.Since(start), time.Second)
			start = time.Now()
			_, err = st.Load(context.Background(), "t")
			require.Error(t, err)
			assert.Less(t, time.Since(start), time.Second)
		})
	}
}

// TestOverflow checks that a report that would overflow a counter is
// refused whole.
func TestOverflow(t *testing.T) {
	rdb := client(t)
	st, _ := newStore(t, rdb)
	big := int64(1) << 62
	syncOne(t, st, "r", store.TenantSync{Tenant: "t", Seq: 1, Used: store.Totals{Operations: big}})
	_, err := st.Sync(context.Background(), store.SyncRequest{Replica: "r", LeaseTTL: time.Minute,
		Tenants: []store.TenantSync{{Tenant: "t", Seq: 2, Used: store.Totals{Operations: big, Evaluations: 1}}}})
	require.ErrorContains(t, err, "overflow")
	tot, err := st.Load(context.Background(), "t")
	require.NoError(t, err)
	assert.Equal(t, store.Totals{Operations: big}, tot, "nothing of the refused report is applied")
	got := syncOne(t, st, "r", store.TenantSync{Tenant: "t", Seq: 2, Used: store.Totals{Evaluations: 1}})
	assert.Equal(t, store.Totals{Operations: big, Evaluations: 1}, got.Reported, "seq 2 was not used up")
}

// TestHugeLimit checks that limits beyond float64's exact integers grant
// exactly.
func TestHugeLimit(t *testing.T) {
	rdb := client(t)
	st, _ := newStore(t, rdb)
	lim := store.Totals{Operations: 1<<63 - 1, TotalMemory: 1 << 60}
	a := syncOne(t, st, "a", store.TenantSync{Tenant: "t", Seq: 1, Used: store.Totals{Operations: 3},
		Want: store.Totals{Operations: 1<<63 - 1, TotalMemory: 1e12 + 1}, Limit: lim})
	assert.Equal(t, int64(1<<53-1), a.Allowance.Operations, "limits are capped at 2^53-1")
	assert.Equal(t, int64(1e12+1), a.Allowance.TotalMemory)
	b := syncOne(t, st, "b", store.TenantSync{Tenant: "t", Seq: 1, Want: store.Totals{Operations: 5, TotalMemory: 5}, Limit: lim})
	assert.Equal(t, int64(0), b.Allowance.Operations)
	assert.Equal(t, int64(5), b.Allowance.TotalMemory)
}

// BenchmarkSync100Tenants measures one Sync round trip that reports and
// leases for 100 tenants (an applied report for each), and reports the
// cost per tenant.
func BenchmarkSync100Tenants(b *testing.B) {
	rdb := client(b)
	st, _ := newStore(b, rdb)
	const n = 100
	req := store.SyncRequest{Replica: "bench", LeaseTTL: time.Minute, Tenants: make([]store.TenantSync, n)}
	for i := range req.Tenants {
		req.Tenants[i] = store.TenantSync{Tenant: "tenant-" + strconv.Itoa(i),
			Want:  store.Totals{Operations: 10, Calls: 10, Evaluations: 1},
			Limit: store.Totals{Operations: 1 << 50, Calls: 1 << 50, Evaluations: 1 << 50}}
	}
	// Another replica holds a lease on every tenant, as in a fleet.
	other := req
	other.Replica = "other"
	other.Tenants = append([]store.TenantSync(nil), req.Tenants...)
	for i := range other.Tenants {
		other.Tenants[i].Seq = 1
	}
	ctx := context.Background()
	_, err := st.Sync(ctx, other)
	require.NoError(b, err)
	seq := uint64(0)
	b.ResetTimer()
	for b.Loop() {
		seq++
		for i := range req.Tenants {
			req.Tenants[i].Seq = seq
			req.Tenants[i].Used = store.Totals{Operations: 5, Calls: 3, CPUTime: 1234 * time.Nanosecond, Evaluations: 1}
		}
		if _, err := st.Sync(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/tenant")
}

// TestCPUCarry checks that sub-microsecond rests of CPU time are carried,
// not dropped: committed CPU time lags by less than 1µs per replica.
func TestCPUCarry(t *testing.T) {
	rdb := client(t)
	st, _ := newStore(t, rdb)
	var got store.TenantState
	for seq := uint64(1); seq <= 10; seq++ {
		got = syncOne(t, st, "r", store.TenantSync{Tenant: "t", Seq: seq, Used: store.Totals{CPUTime: 999}})
	}
	assert.Equal(t, 9990*time.Nanosecond, got.Reported.CPUTime, "Reported is exact")
	assert.Equal(t, 9*time.Microsecond, got.Committed.CPUTime, "committed in whole µs, the rest carried")
	got = syncOne(t, st, "q", store.TenantSync{Tenant: "t", Seq: 1, Used: store.Totals{CPUTime: 1999}})
	assert.Equal(t, 10*time.Microsecond, got.Committed.CPUTime)
	tot, err := st.Load(context.Background(), "t")
	require.NoError(t, err)
	assert.Equal(t, 10*time.Microsecond, tot.CPUTime)
}

// TestBigCounters checks that counters past 2^53 (where Lua's float64
// numbers stop being exact) are added exactly.
func TestBigCounters(t *testing.T) {
	rdb := client(t)
	st, _ := newStore(t, rdb)
	big := int64(1)<<53 + 1
	used := store.Totals{Operations: big, TotalMemory: 3*big + 2, CPUTime: time.Duration(big)}
	var got store.TenantState
	for seq := uint64(1); seq <= 3; seq++ {
		got = syncOne(t, st, "r", store.TenantSync{Tenant: "t", Seq: seq, Used: used,
			Want: store.Totals{Operations: 1}, Limit: store.Totals{Operations: 10}})
	}
	want := store.Totals{Operations: 3 * big, TotalMemory: 3 * (3*big + 2), CPUTime: 3 * time.Duration(big)}
	assert.Equal(t, want, got.Reported)
	assert.Equal(t, store.Totals{Operations: 3 * big, TotalMemory: 3 * (3*big + 2), CPUTime: want.CPUTime}, got.Allowance,
		"the allowance of what is not limited: what was reported")
	want.CPUTime = want.CPUTime / time.Microsecond * time.Microsecond
	assert.Equal(t, want, got.Committed)
	tot, err := st.Load(context.Background(), "t")
	require.NoError(t, err)
	assert.Equal(t, want, tot)
}

// TestReclaimCopiesCPU checks a detail of MemoryStore that the Redis store
// mirrors: reclaiming a lease sets the replica's whole allowance, CPU time
// included, to what it reported, each time.
func TestReclaimCopiesCPU(t *testing.T) {
	rdb := client(t)
	st, _ := newStore(t, rdb)
	ref := store.NewMemory()
	ctx := context.Background()
	steps := []store.SyncRequest{
		{Replica: "o", Tenants: []store.TenantSync{{Tenant: "t", Seq: 1, Used: store.Totals{CPUTime: 1500}}}},
		{Replica: "p", LeaseTTL: time.Hour, Tenants: []store.TenantSync{{Tenant: "t", Seq: 1}}},
		{Replica: "o", Tenants: []store.TenantSync{{Tenant: "t", Seq: 1}}},
		{Replica: "o", Tenants: []store.TenantSync{{Tenant: "t", Seq: 2, Used: store.Totals{CPUTime: 500}}}},
		{Replica: "p", LeaseTTL: time.Hour, Tenants: []store.TenantSync{{Tenant: "t", Seq: 2}}},
		{Replica: "o", Tenants: []store.TenantSync{{Tenant: "t", Seq: 2}}},
	}
	for i, req := range steps {
		want, err := ref.Sync(ctx, req)
		require.NoError(t, err)
		got, err := st.Sync(ctx, req)
		require.NoError(t, err)
		assert.Equal(t, want.Tenants[0].Reported, got.Tenants[0].Reported, "step %d", i)
		assert.Equal(t, want.Tenants[0].Allowance, got.Tenants[0].Allowance, "step %d", i)
		time.Sleep(2 * time.Millisecond) // o's leases of 0 have expired
	}
}
