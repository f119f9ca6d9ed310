package reslimit

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Issue 11, item 7: a Guard is a value and copies happen; releasing a copy
// after the original (or the original after a copy) gives back what was
// acquired once, never twice.

func TestCopiedMemoryGuardReleasesOnce(t *testing.T) {
	tr := newT(t, Limits{MaxMemoryBytes: 10_000})
	require.NoError(t, tr.TrackMemory(500)) // held by its real owner
	g, err := tr.AcquireMemory(100)
	require.NoError(t, err)
	c := g // a copy, as happens when a Guard is passed by value
	g.Release()
	c.Release() // must not give back another 100 bytes
	assert.False(t, c.held(), "a copy of a released guard holds nothing")
	assert.Equal(t, int64(500), tr.Usage().MemoryBytes)
	require.NoError(t, tr.ReleaseMemory(500), "the real owner's bytes are still held")

	// The copy released first, then the original.
	g, err = tr.AcquireMemory(100)
	require.NoError(t, err)
	c = g
	c.Release()
	assert.False(t, g.held())
	g.Release()
	assert.Zero(t, tr.Usage().MemoryBytes)
}

func TestCopiedMemoryGuardOfAccountRun(t *testing.T) {
	acct, err := NewAccount("a", AccountLimits{MaxMemory: 1000})
	require.NoError(t, err)
	tr, err := acct.Begin(Limits{})
	require.NoError(t, err)
	defer tr.End()
	require.NoError(t, tr.TrackMemory(500))
	g, err := tr.AcquireMemory(300)
	require.NoError(t, err)
	c := g
	g.Release()
	c.Release()
	assert.Equal(t, int64(500), tr.Usage().MemoryBytes)
	assert.Equal(t, int64(500), acct.Stats().MemoryBytes)
	_, err = tr.AcquireMemory(501)
	require.Error(t, err, "the account still counts the owner's 500 bytes")
}

func TestCopiedSlotGuardReleasesOnce(t *testing.T) {
	tr := newT(t, Limits{MaxConcurrent: 2})
	a, err := tr.TryAcquireSlot()
	require.NoError(t, err)
	b, err := tr.TryAcquireSlot()
	require.NoError(t, err)
	c := a
	a.Release()
	c.Release() // a second release through a copy frees nothing
	assert.Equal(t, int64(1), tr.Usage().Concurrent)
	d, err := tr.TryAcquireSlot()
	require.NoError(t, err)
	_, err = tr.TryAcquireSlot()
	require.Error(t, err, "MaxConcurrent 2 with two holders admits no third")
	b.Release()
	d.Release()
	assert.Zero(t, tr.Usage().Concurrent)
}

// A copy kept across a re-acquire must not release the new holder's slot
// or bytes, even when the new guard reuses what the old one had.
func TestStaleGuardCopyDoesNotReleaseANewGuard(t *testing.T) {
	tr := newT(t, Limits{MaxConcurrent: 1, MaxMemoryBytes: 100})
	s, err := tr.TryAcquireSlot()
	require.NoError(t, err)
	m, err := tr.AcquireMemory(100)
	require.NoError(t, err)
	sc, mc := s, m
	s.Release()
	m.Release()
	s2, err := tr.TryAcquireSlot()
	require.NoError(t, err)
	m2, err := tr.AcquireMemory(100)
	require.NoError(t, err)
	sc.Release()
	mc.Release()
	assert.True(t, s2.held())
	assert.True(t, m2.held())
	assert.Equal(t, int64(1), tr.Usage().Concurrent)
	assert.Equal(t, int64(100), tr.Usage().MemoryBytes)
	s2.Release()
	m2.Release()
}

// Many guards held at once on one tracker (more than the tracker keeps
// identities for without allocating) still release once each.
func TestManyGuardsHeldAtOnce(t *testing.T) {
	tr := newT(t, Limits{MaxMemoryBytes: 1 << 20, MaxConcurrent: 1000})
	var gs, cs []Guard
	for i := 0; i < 300; i++ {
		g, err := tr.AcquireMemory(10)
		require.NoError(t, err)
		s, err := tr.TryAcquireSlot()
		require.NoError(t, err)
		gs = append(gs, g, s)
	}
	cs = append(cs, gs...)
	for i := range gs {
		gs[i].Release()
	}
	for i := range cs {
		assert.False(t, cs[i].held())
		cs[i].Release()
	}
	u := tr.Usage()
	assert.Zero(t, u.MemoryBytes)
	assert.Zero(t, u.Concurrent)
	assert.Equal(t, int64(3000), u.TotalMemoryBytes)
}
