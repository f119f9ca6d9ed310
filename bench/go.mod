module github.com/reslimit/reslimit/bench

go 1.26.8

require github.com/reslimit/reslimit v0.0.0

require golang.org/x/time v0.16.0 // indirect

require (
	github.com/bits-and-blooms/bitset v1.24.4 // indirect
	github.com/failsafe-go/failsafe-go v0.9.8
	golang.org/x/sys v0.49.0 // indirect
)

replace github.com/reslimit/reslimit => ../
