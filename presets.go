package reslimit

import "time"

const (
	kib = 1024
	mib = 1024 * kib
	gib = 1024 * mib
)

// Default returns limits for ordinary work: 100 MiB memory, 30 s CPU,
// 50 MiB files, 1,000,000 operations, 100 concurrent, 60 s timeout.
func Default() Limits {
	return Limits{
		MaxMemoryBytes: 100 * mib,
		MaxCPUTime:     30 * time.Second,
		MaxFileSize:    50 * mib,
		MaxOperations:  1_000_000,
		MaxConcurrent:  100,
		Timeout:        60 * time.Second,
	}
}

// Strict returns limits for untrusted work: 10 MiB memory, 5 s CPU, 5 MiB
// files, 10,000 operations, 10 concurrent, 10 s timeout.
func Strict() Limits {
	return Limits{
		MaxMemoryBytes: 10 * mib,
		MaxCPUTime:     5 * time.Second,
		MaxFileSize:    5 * mib,
		MaxOperations:  10_000,
		MaxConcurrent:  10,
		Timeout:        10 * time.Second,
	}
}

// Relaxed returns limits for trusted work: 1 GiB memory, 5 min CPU,
// 500 MiB files, 100,000,000 operations, 1,000 concurrent, 10 min timeout.
func Relaxed() Limits {
	return Limits{
		MaxMemoryBytes: 1 * gib,
		MaxCPUTime:     5 * time.Minute,
		MaxFileSize:    500 * mib,
		MaxOperations:  100_000_000,
		MaxConcurrent:  1_000,
		Timeout:        10 * time.Minute,
	}
}

// Unlimited returns limits with every field 0: usage is counted, nothing is
// refused.
func Unlimited() Limits { return Limits{} }
