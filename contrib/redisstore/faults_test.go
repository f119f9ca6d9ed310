package redisstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/contrib/redisstore"
	"github.com/reslimit/reslimit/store"
	"github.com/reslimit/reslimit/store/storetest"
)

// Regression tests of issue 10 on a real Redis (standalone and Cluster).

// counting counts the store's Sync round trips and script calls (one per
// tenant).
type counting struct {
	store.Store
	calls, scripts atomic.Int64
}

func (c *counting) Sync(ctx context.Context, req store.SyncRequest) (store.SyncResponse, error) {
	c.calls.Add(1)
	c.scripts.Add(int64(len(req.Tenants)))
	return c.Store.Sync(ctx, req)
}

// Item 1: no false refusals at start-up while a lease is in flight.
func TestFleetOnRedisNoFalseRefusalsAtStartup(t *testing.T) {
	rdb := client(t)
	st, _ := newStore(t, rdb)
	limits := reslimit.AccountLimits{MaxTotalOperations: 1_000_000_000_000}
	var refusals atomic.Int64
	var last atomic.Value
	var wg sync.WaitGroup
	for _, id := range []string{"r1", "r2"} {
		l := replica(t, st, id, limits, reslimit.WithSyncInterval(time.Second))
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 10 {
					tr, err := l.Account("acme").Begin(reslimit.Limits{})
					if err != nil {
						refusals.Add(1)
						last.Store(err)
						continue
					}
					for range 5000 {
						if err := tr.TrackOperation(); err != nil {
							refusals.Add(1)
							last.Store(err)
							break
						}
					}
					tr.End()
				}
			}()
		}
	}
	wg.Wait()
	assert.Zero(t, refusals.Load(), "false refusals; last: %v", last.Load())
}

// Item 2: a fresh replica shows the tenant's committed totals at once.
func TestFleetOnRedisLoadsTotalsOnOpen(t *testing.T) {
	rdb := client(t)
	st, _ := newStore(t, rdb)
	limits := reslimit.AccountLimits{MaxTotalOperations: 10_000}
	old := replica(t, st, "old", limits)
	got := hammer(old, "acme", 2)
	require.NoError(t, old.Close(context.Background()))
	fresh := replica(t, st, "fresh", limits, reslimit.WithSyncInterval(time.Hour))
	s := fresh.Account("acme").Stats()
	assert.Equal(t, got, s.Operations)
	assert.True(t, s.Exhausted)
	_, err := fresh.Account("acme").Begin(reslimit.Limits{})
	assert.ErrorIs(t, err, reslimit.ErrLimitExceeded)
}

// Item 3: near the limit the fleet reaches it, and a tenant at its limit
// costs Redis about one script call per replica per sync interval.
func TestFleetOnRedisNearTheLimit(t *testing.T) {
	rdb := client(t)
	base, _ := newStore(t, rdb)
	st := &counting{Store: base}
	const limit, charge = 10_000, 7
	const interval = 100 * time.Millisecond
	_, err := base.Sync(context.Background(), store.SyncRequest{Replica: "earlier", Final: true,
		Tenants: []store.TenantSync{{Tenant: "acme", Seq: 1, Used: store.Totals{Operations: limit - 11}}}})
	require.NoError(t, err)
	var granted atomic.Int64
	granted.Store(limit - 11)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ledgers []*reslimit.Ledger
	for i := range 3 {
		l := replica(t, st, fmt.Sprintf("r%d", i), reslimit.AccountLimits{MaxTotalOperations: limit}, reslimit.WithSyncInterval(interval))
		ledgers = append(ledgers, l)
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if tr, err := l.Account("acme").Begin(reslimit.Limits{}); err == nil {
						if tr.TrackOperations(charge) == nil {
							granted.Add(charge)
						}
						tr.End()
					}
					time.Sleep(100 * time.Microsecond) // a client's pace: Redis keeps real time
				}
			}()
		}
	}
	start := time.Now()
	require.Eventually(t, func() bool { return granted.Load() > limit-charge }, 10*time.Second, time.Millisecond,
		"the fleet stalls at %d of %d", granted.Load(), limit)
	took := time.Since(start)
	t.Logf("the fleet reached %d of %d in %v with %d script calls", granted.Load(), limit, took, st.scripts.Load())
	time.Sleep(2 * interval) // the replicas settle at the limit (real time: Redis's clock)
	scripts := st.scripts.Load()
	const window = 2 * time.Second
	time.Sleep(window) // the rate of script calls is measured over this real-time window
	perReplica := float64(st.scripts.Load()-scripts) / 3 / float64(window/interval)
	t.Logf("at the limit: %.2f script calls per replica per sync interval", perReplica)
	assert.LessOrEqual(t, perReplica, 2.0, "a tenant at its limit storms Redis")
	close(stop)
	wg.Wait()
	for _, l := range ledgers {
		require.NoError(t, l.Close(context.Background()))
	}
	c, err := base.Load(context.Background(), "acme")
	require.NoError(t, err)
	assert.Equal(t, granted.Load(), c.Operations)
	assert.LessOrEqual(t, c.Operations, int64(limit))
}

// ownRedis starts a redis-server of the test's own on a free loopback
// port, without persistence unless args say otherwise.
func ownRedis(t *testing.T) *redisProcess {
	t.Helper()
	client(t) // skips without RESLIMIT_REDIS_ADDR
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("%s is set but redis-server is not on PATH: %v", addrEnv, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &redisProcess{addr: ln.Addr().String(), dir: t.TempDir(), noPersistence: true}
	ln.Close()
	p.start(t)
	t.Cleanup(p.stop)
	return p
}

// Item 5: Redis restarted without its data: detected, reported, restored.
func TestFleetOnRedisRestartWithoutData(t *testing.T) {
	p := ownRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: p.addr, ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	st, err := redisstore.New(rdb, redisstore.WithTimeout(500*time.Millisecond))
	require.NoError(t, err)
	const limit = 50_000
	var logs bytes.Buffer
	var logMu sync.Mutex
	logger := slog.New(slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
		logMu.Lock()
		defer logMu.Unlock()
		return logs.Write(b)
	}), nil))
	limits := reslimit.AccountLimits{MaxTotalOperations: limit}
	l1 := replica(t, st, "r1", limits, reslimit.WithLogger(logger))
	l2 := replica(t, st, "r2", limits)
	for _, l := range []*reslimit.Ledger{l1, l2} {
		tr, err := l.Account("acme").Begin(reslimit.Limits{})
		require.NoError(t, err)
		require.NoError(t, tr.TrackOperations(15_000))
		tr.End()
		require.NoError(t, l.Sync(context.Background()))
	}

	p.stop()
	p.start(t) // empty
	require.Eventually(t, func() bool {
		c, err := st.Load(context.Background(), "acme")
		return err == nil && c.Operations == 30_000
	}, 20*time.Second, 20*time.Millisecond, "the live replicas report again what they had reported")
	assert.Positive(t, l1.Account("acme").Stats().Fleet.StoreResets)
	logMu.Lock()
	assert.Contains(t, logs.String(), "lost reports")
	logMu.Unlock()

	got := hammer(l1, "acme", 2) + hammer(l2, "acme", 2)
	assert.LessOrEqual(t, 30_000+got, int64(limit), "the quota came back")
	require.NoError(t, l1.Close(context.Background()))
	require.NoError(t, l2.Close(context.Background()))
	c, err := st.Load(context.Background(), "acme")
	require.NoError(t, err)
	assert.Equal(t, 30_000+got, c.Operations, "nothing lost, nothing doubled")
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// clusterEnv names the variable with the seed addresses of a Redis
// Cluster (comma-separated host:port) for the Cluster tests.
const clusterEnv = "RESLIMIT_REDIS_CLUSTER_ADDRS"

func clusterClient(t *testing.T) *redis.ClusterClient {
	t.Helper()
	addrs := os.Getenv(clusterEnv)
	if addrs == "" {
		t.Skip(clusterEnv + " is not set: skipping the Redis Cluster tests")
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(addrs, ",")})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, rdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return c.Ping(ctx).Err() }))
	return rdb
}

// newClusterStore is newStore for a Cluster: its keys are deleted from
// every master when t ends.
func newClusterStore(t *testing.T, rdb *redis.ClusterClient) *redisstore.Store {
	t.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	prefix := "reslimit-test-" + hex.EncodeToString(b[:])
	st, err := redisstore.New(rdb, redisstore.WithKeyPrefix(prefix))
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := rdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			iter := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
			for iter.Next(ctx) {
				if err := c.Del(ctx, iter.Val()).Err(); err != nil {
					return err
				}
			}
			return iter.Err()
		})
		if err != nil {
			t.Errorf("deleting test keys: %v", err)
		}
	})
	return st
}

func TestConformanceCluster(t *testing.T) {
	rdb := clusterClient(t)
	storetest.Run(t, storetest.Config{
		New:           func(t *testing.T) store.Store { return newClusterStore(t, rdb) },
		CPUResolution: time.Microsecond,
	})
}

// Tenants spread over the Cluster's masters: the fleet never passes any
// tenant's limit, bills exactly, and the store lists them all.
func TestFleetOnClusterNeverPassesTheLimit(t *testing.T) {
	rdb := clusterClient(t)
	st := newClusterStore(t, rdb)
	const limit = 20_000
	tenants := []string{"acme", "globex", "initech", "umbrella", "hooli", "stark"}
	limits := reslimit.AccountLimits{MaxTotalOperations: limit}
	var ledgers []*reslimit.Ledger
	for i := range 3 {
		ledgers = append(ledgers, replica(t, st, fmt.Sprintf("r%d", i), limits))
	}
	granted := make([]atomic.Int64, len(tenants))
	var wg sync.WaitGroup
	for _, l := range ledgers {
		for k, tn := range tenants {
			wg.Add(1)
			go func() {
				defer wg.Done()
				granted[k].Add(hammer(l, tn, 1))
			}()
		}
	}
	wg.Wait()
	for _, l := range ledgers {
		require.NoError(t, l.Close(context.Background()))
	}
	masters := map[string]bool{}
	for k, tn := range tenants {
		c, err := st.Load(context.Background(), tn)
		require.NoError(t, err)
		assert.LessOrEqual(t, granted[k].Load(), int64(limit), tn)
		assert.GreaterOrEqual(t, granted[k].Load(), int64(limit*95/100), tn)
		assert.Equal(t, granted[k].Load(), c.Operations, tn)
		hash, _ := st.Keys(tn)
		slot, err := rdb.ClusterKeySlot(context.Background(), hash).Result()
		require.NoError(t, err)
		masters[fmt.Sprint(slot*3/16384)] = true
	}
	listed := map[string]int64{}
	require.NoError(t, st.ListTenants(context.Background(), func(tenant string, c store.Totals) error {
		listed[tenant] = c.Operations
		return nil
	}))
	for k, tn := range tenants {
		assert.Equal(t, granted[k].Load(), listed[tn], "listed %s", tn)
	}
	t.Logf("tenants on %d of 3 slot ranges", len(masters))
}
