package wasmbin

// The guests: each is given as WAT, then assembled from the same
// instructions. All are built into one module, Guests, whose exports are
// (by function index):
//
//	(module
//	  (memory (export "memory") 1)
//	  ;; 0: spins forever
//	  (func (export "spin") (loop $l (br $l)))
//	  ;; 1: grows memory a page at a time; traps when a growth is refused
//	  (func (export "grow")
//	    (loop $l
//	      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
//	        (then unreachable))
//	      (br $l)))
//	  ;; 2: grows until refused, then returns its size in pages (no trap)
//	  (func (export "grow_until_refused") (result i32)
//	    (loop $l
//	      (br_if $l (i32.eqz (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))))
//	    (memory.size))
//	  ;; 3: recurses forever
//	  (func $recurse (export "recurse") (call $recurse))
//	  ;; 4: behaves: the sum of i*i for i < n
//	  (func (export "sum") (param $n i32) (result i64) (local $i i32) (local $acc i64)
//	    (loop $l
//	      (if (i32.lt_u (local.get $i) (local.get $n))
//	        (then
//	          (local.set $acc (i64.add (local.get $acc)
//	            (i64.extend_i32_u (i32.mul (local.get $i) (local.get $i)))))
//	          (local.set $i (i32.add (local.get $i) (i32.const 1)))
//	          (br $l))))
//	    (local.get $acc))
//	  ;; 5: behaves, with many calls: the n-th Fibonacci number, recursively
//	  (func $fib (export "fib") (param $n i32) (result i64)
//	    (if (result i64) (i32.lt_u (local.get $n) (i32.const 2))
//	      (then (i64.extend_i32_u (local.get $n)))
//	      (else (i64.add
//	        (call $fib (i32.sub (local.get $n) (i32.const 1)))
//	        (call $fib (i32.sub (local.get $n) (i32.const 2))))))))
func Guests() *Module {
	return &Module{
		HasMemory: true, MemoryMin: 1,
		Funcs: []Func{
			{Export: "spin", Body: Ops(OpLoop, BlockVoid, OpBr, 0, OpEnd)},
			{Export: "grow", Body: Ops(
				OpLoop, BlockVoid,
				I32Const(1), OpMemoryGrow, byte(0), I32Const(-1), OpI32Eq,
				OpIf, BlockVoid, OpUnreachable, OpEnd,
				OpBr, 0,
				OpEnd)},
			{Export: "grow_until_refused", Results: []byte{I32}, Body: Ops(
				OpLoop, BlockVoid,
				I32Const(1), OpMemoryGrow, byte(0), I32Const(-1), OpI32Eq, OpI32Eqz,
				OpBrIf, 0,
				OpEnd,
				OpMemorySize, byte(0))},
			{Export: "recurse", Body: Ops(OpCall, 3)},
			{Export: "sum", Params: []byte{I32}, Results: []byte{I64}, Locals: []byte{I32, I64}, Body: Ops(
				OpLoop, BlockVoid,
				OpLocalGet, 1, OpLocalGet, 0, OpI32LtU,
				OpIf, BlockVoid,
				OpLocalGet, 2, OpLocalGet, 1, OpLocalGet, 1, OpI32Mul, OpI64ExtendU, OpI64Add, OpLocalSet, 2,
				OpLocalGet, 1, I32Const(1), OpI32Add, OpLocalSet, 1,
				OpBr, 1,
				OpEnd,
				OpEnd,
				OpLocalGet, 2)},
			{Export: "fib", Params: []byte{I32}, Results: []byte{I64}, Body: Ops(
				OpLocalGet, 0, I32Const(2), OpI32LtU,
				OpIf, I64,
				OpLocalGet, 0, OpI64ExtendU,
				OpElse,
				OpLocalGet, 0, I32Const(1), OpI32Sub, OpCall, 5,
				OpLocalGet, 0, I32Const(2), OpI32Sub, OpCall, 5,
				OpI64Add,
				OpEnd)},
		},
	}
}

// HostCaller is a guest that calls a host function:
//
//	(module
//	  (import "env" "charge" (func $charge (param i32)))
//	  ;; calls charge(n) once
//	  (func (export "charge_once") (param $n i32) (call $charge (local.get $n)))
//	  ;; calls charge(1) forever
//	  (func (export "charge_forever") (loop $l (call $charge (i32.const 1)) (br $l))))
func HostCaller() *Module {
	return &Module{
		Imports: []Import{{Module: "env", Name: "charge", Params: []byte{I32}}},
		Funcs: []Func{
			{Export: "charge_once", Params: []byte{I32}, Body: Ops(OpLocalGet, 0, OpCall, 0)},
			{Export: "charge_forever", Body: Ops(
				OpLoop, BlockVoid, I32Const(1), OpCall, 0, OpBr, 0, OpEnd)},
		},
	}
}
