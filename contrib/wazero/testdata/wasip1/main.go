// Command wasip1 is the Go program the tests and benchmarks of
// reslimitwazero run under wazero's WASI, bare and instrumented:
//
//	GOOS=wasip1 GOARCH=wasm go build -o prog.wasm ./testdata/wasip1
//
// It prints what it computes (deterministically) for its argument n: a
// sort, a map, a SHA-256, JSON, goroutines over a channel, floats.
package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

func main() {
	n := 1000
	if len(os.Args) > 1 {
		v, err := strconv.Atoi(os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		n = v
	}

	// A pseudo-random sequence, sorted.
	xs := make([]uint32, n)
	s := uint32(2463534242)
	for i := range xs {
		s ^= s << 13
		s ^= s >> 17
		s ^= s << 5
		xs[i] = s
	}
	slices.Sort(xs)
	fmt.Println("sorted:", xs[0], xs[n/2], xs[n-1])

	// Words counted in a map.
	counts := map[string]int{}
	for i, x := range xs {
		counts[strconv.Itoa(int(x%97))] += i
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	fmt.Println("keys:", len(keys), keys[0], counts[keys[0]])

	// Hashing and JSON.
	var sb strings.Builder
	for _, x := range xs {
		sb.WriteString(strconv.FormatUint(uint64(x), 36))
	}
	fmt.Printf("sha256: %x\n", sha256.Sum256([]byte(sb.String())))
	js, _ := json.Marshal(map[string]any{"n": n, "first": xs[:3], "ok": true})
	fmt.Println("json:", string(js))

	// Goroutines (the wasm port runs them on one thread).
	ch := make(chan uint64)
	for w := range 4 {
		go func() {
			var sum uint64
			for i := w; i < n; i += 4 {
				sum += uint64(xs[i])
			}
			ch <- sum
		}()
	}
	var total uint64
	for range 4 {
		total += <-ch
	}
	fmt.Println("total:", total)

	// Floats.
	f := 0.0
	for i := 1; i <= n; i++ {
		f += math.Sqrt(float64(i)) / float64(i)
	}
	fmt.Printf("float: %.6f\n", f)
}
