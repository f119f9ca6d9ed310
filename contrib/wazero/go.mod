module github.com/reslimit/reslimit/contrib/wazero

go 1.26.8

replace github.com/reslimit/reslimit => ../..

require (
	github.com/reslimit/reslimit v0.0.0-00010101000000-000000000000
	github.com/reslimit/reslimit/contrib/starlark v0.0.0-00010101000000-000000000000
	github.com/tetratelabs/wazero v1.12.0
	go.starlark.net v0.0.0-20260908191801-89a6a09411d5
	go.uber.org/goleak v1.3.0
)

require (
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/time v0.16.0 // indirect
)

replace github.com/reslimit/reslimit/contrib/starlark => ../starlark
