package reslimit

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/reslimit/reslimit/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Issue 11, item 8: a nil context.Context is an invalid argument, not a
// panic.
func TestNilContextIsAnError(t *testing.T) {
	var nilCtx context.Context
	ran := false
	fn := func(context.Context) error { ran = true; return nil }

	_, err := Run(nilCtx, Limits{}, fn)
	assert.ErrorIs(t, err, ErrInvalidArgument)
	_, err = Run(nilCtx, Limits{MaxCPUTime: 1e9, Timeout: 1e9}, fn)
	assert.ErrorIs(t, err, ErrInvalidArgument)

	for _, l := range []Limits{{}, {MaxConcurrent: 1}, {MaxCPUTime: 1e9}} {
		f := Limit(func(ctx context.Context, in int) (int, error) { ran = true; return in, nil }, l)
		_, err = f(nilCtx, 1)
		assert.ErrorIs(t, err, ErrInvalidArgument, "%+v", l)
	}
	assert.False(t, ran, "nothing runs with a nil context")

	tr := newT(t, Limits{MaxConcurrent: 1})
	g, err := tr.AcquireSlot(nilCtx)
	assert.ErrorIs(t, err, ErrInvalidArgument)
	assert.False(t, g.held())
	assert.Zero(t, tr.Usage().Concurrent)
	var nilTr *Tracker
	_, err = nilTr.AcquireSlot(nilCtx)
	assert.ErrorIs(t, err, ErrInvalidArgument)

	assert.Nil(t, FromContext(nilCtx))

	m, err := NewMonitor(MonitorConfig{})
	require.NoError(t, err)
	assert.ErrorIs(t, m.Start(nilCtx), ErrInvalidArgument)
	m.Stop()

	ledger := mustLedger(t, AccountLimits{}, WithStore(store.NewMemory()))
	assert.ErrorIs(t, ledger.Sync(nilCtx), ErrInvalidArgument)
	assert.ErrorIs(t, ledger.Close(nilCtx), ErrInvalidArgument)
	require.NoError(t, ledger.Close(context.Background()))
}

// Issue 11, item 8: usage is always counted: limited streams record their
// size without MaxFileSize too.
func TestLimitedStreamsCountWithoutALimit(t *testing.T) {
	tr := newT(t, Limits{})
	r := tr.LimitReader(strings.NewReader(strings.Repeat("x", 1000)))
	n, err := io.Copy(io.Discard, r)
	require.NoError(t, err)
	assert.Equal(t, int64(1000), n)
	assert.Equal(t, int64(1000), tr.Usage().LargestFileBytes)

	var buf bytes.Buffer
	w := tr.LimitWriter(&buf)
	for range 30 {
		_, err := w.Write(bytes.Repeat([]byte("y"), 100))
		require.NoError(t, err)
	}
	assert.Equal(t, 3000, buf.Len())
	assert.Equal(t, int64(3000), tr.Usage().LargestFileBytes)
	assert.Zero(t, tr.Usage().Refusals)

	u := tr.End()
	assert.Equal(t, int64(3000), u.LargestFileBytes)
	_, err = r.Read(make([]byte, 4))
	assert.ErrorIs(t, err, ErrClosed)
	_, err = w.Write([]byte("z"))
	assert.ErrorIs(t, err, ErrClosed)
	assert.Equal(t, 3000, buf.Len(), "nothing written after End")
}
