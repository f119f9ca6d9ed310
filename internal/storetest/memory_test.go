package storetest_test

import (
	"testing"

	"github.com/reslimit/reslimit"
	"github.com/reslimit/reslimit/internal/storetest"
)

// TestMemoryStore runs the conformance suite against the reference
// implementation itself.
func TestMemoryStore(t *testing.T) {
	storetest.Run(t, storetest.Config{
		New: func(*testing.T) reslimit.Store { return reslimit.NewMemoryStore() },
	})
}
