package reslimit

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// mustLedger returns NewLedger(defaults, opts...), failing tb on an error.
func mustLedger(tb testing.TB, defaults AccountLimits, opts ...LedgerOption) *Ledger {
	tb.Helper()
	l, err := NewLedger(defaults, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return l
}
