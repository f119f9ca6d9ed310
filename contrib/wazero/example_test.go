package reslimitwazero_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/reslimit/reslimit"
	reslimitwazero "github.com/reslimit/reslimit/contrib/wazero"
	"github.com/tetratelabs/wazero"
)

// countWasm is a guest written by hand:
//
//	(module
//	  (func (export "count") (param $n i32) (result i32) (local $i i32)
//	    (loop $l
//	      (local.set $i (i32.add (local.get $i) (i32.const 1)))
//	      (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
//	    (local.get $i)))
//
// count(n) runs 8n+4 instructions: the loop, 8 per iteration, and the
// loop's end, local.get and the function's end.
var countWasm = []byte{
	0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
	0x01, 0x06, 0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f, // type 0: (i32) -> (i32)
	0x03, 0x02, 0x01, 0x00, // function 0 has type 0
	0x07, 0x09, 0x01, 0x05, 'c', 'o', 'u', 'n', 't', 0x00, 0x00, // export "count": function 0
	0x0a, 0x19, 0x01, 0x17, 0x01, 0x01, 0x7f, // code: a body of 23 bytes, one i32 local
	0x03, 0x40, // loop
	0x20, 0x01, 0x41, 0x01, 0x6a, 0x21, 0x01, // i = i + 1
	0x20, 0x01, 0x20, 0x00, 0x49, 0x0d, 0x00, // br_if 0 (i < n)
	0x0b,       // end (loop)
	0x20, 0x01, // local.get i
	0x0b, // end
}

// An instrumented guest is billed one operation per instruction it runs,
// so MaxOperations binds it. With 5,000 operations, count(1000) runs its
// loop instruction and 624 iterations (4,993 instructions); the next
// iteration's 8 do not fit in the 7 left, so it is stopped before it, and
// billed what it ran.
func Example() {
	ctx := context.Background()
	wasm, err := reslimitwazero.Instrument(countWasm)
	if err != nil {
		log.Fatal(err)
	}
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	compiled, err := rt.CompileModule(ctx, wasm)
	if err != nil {
		log.Fatal(err)
	}

	count := func(n uint64, maxOps int64) {
		u, err := reslimit.Run(ctx, reslimit.Limits{MaxOperations: maxOps}, func(ctx context.Context) error {
			ctx = reslimitwazero.WithTracker(ctx)
			mod, err := reslimitwazero.Instantiate(ctx, rt, compiled, wazero.NewModuleConfig().WithName(""))
			if err != nil {
				return err
			}
			defer mod.Close(ctx)
			res, err := reslimitwazero.Call(ctx, mod.ExportedFunction("count"), n)
			if err != nil {
				return err
			}
			fmt.Printf("count(%d) = %d\n", n, res[0])
			return nil
		})
		var le *reslimit.LimitError
		switch {
		case errors.As(err, &le):
			fmt.Printf("count(%d) refused: %s limit %d; %d operations charged\n", n, le.Resource, le.Limit, u.Operations)
		case err != nil:
			fmt.Println(err)
		default:
			fmt.Printf("%d operations charged\n", u.Operations)
		}
	}
	count(1000, 10_000)
	count(1000, 5_000)
	// Output:
	// count(1000) = 1000
	// 8004 operations charged
	// count(1000) refused: operations limit 5000; 4993 operations charged
}
