package storetest_test

import (
	"testing"

	"github.com/reslimit/reslimit/store"
	"github.com/reslimit/reslimit/store/storetest"
)

// TestMemoryStore runs the conformance suite against the reference
// implementation itself.
func TestMemoryStore(t *testing.T) {
	storetest.Run(t, storetest.Config{
		New: func(*testing.T) store.Store { return store.NewMemory() },
	})
}
