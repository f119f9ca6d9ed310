package reslimitstarlark_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"go.starlark.net/starlark"

	"github.com/reslimit/reslimit"
	reslimitstarlark "github.com/reslimit/reslimit/contrib/starlark"
)

// Invalid option values are errors at construction, from Thread, ExecFile
// and Call alike, and nothing runs.
func TestInvalidOptions(t *testing.T) {
	ran := false
	fn := starlark.NewBuiltin("f", func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error) {
		ran = true
		return starlark.None, nil
	})
	for name, tc := range map[string]struct {
		opt  reslimitstarlark.Option
		want string
	}{
		"WithBatch": {reslimitstarlark.WithBatch(0), "WithBatch(0)"},
		"WithPrint": {reslimitstarlark.WithPrint(nil), "WithPrint(nil)"},
	} {
		t.Run(name, func(t *testing.T) {
			check := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, reslimit.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: got %v, want an ErrInvalidArgument naming %s", what, err, tc.want)
				}
			}
			thread, err := reslimitstarlark.Thread(context.Background(), tc.opt)
			check("Thread", err)
			if thread != nil {
				t.Error("Thread returned a thread with its error")
			}
			_, err = reslimitstarlark.ExecFile(context.Background(), fileOpts, "x.star", "x = 1", nil, tc.opt)
			check("ExecFile", err)
			_, err = reslimitstarlark.Call(context.Background(), fn, nil, nil, tc.opt)
			check("Call", err)
			if ran {
				t.Error("Call ran the function despite an invalid option")
			}
		})
	}
}

// A nil context is an error too.
func TestNilContext(t *testing.T) {
	var nilCtx context.Context
	_, err := reslimitstarlark.Thread(nilCtx)
	if !errors.Is(err, reslimit.ErrInvalidArgument) {
		t.Errorf("Thread(nil): got %v, want an ErrInvalidArgument", err)
	}
}

// Valid edge values stay valid: a batch of 1, an empty name, a nil Option.
func TestValidEdgeOptions(t *testing.T) {
	thread, err := reslimitstarlark.Thread(context.Background(),
		reslimitstarlark.WithBatch(1), reslimitstarlark.WithName(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := reslimitstarlark.Finish(thread); err != nil {
		t.Fatal(err)
	}
}
