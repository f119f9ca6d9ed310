package storetest_test

import (
	"testing"

	"github.com/reslimit/reslimit/store"
	"github.com/reslimit/reslimit/store/storetest"
)

// A store proves itself with one test that runs the suite against fresh
// instances of it (here store.Memory; contrib/redisstore runs it on a
// real Redis, each instance under its own key prefix):
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, storetest.Config{New: newStore})
//	}
func Example() {
	cfg := storetest.Config{
		New: func(t *testing.T) store.Store { return store.NewMemory() },
	}
	_ = cfg // storetest.Run(t, cfg) in a Test function
}
