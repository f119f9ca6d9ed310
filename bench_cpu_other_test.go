//go:build !unix

package reslimit

func benchProcessCPU() int64 { return -1 }
