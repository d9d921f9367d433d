package main

import (
	"context"
	"fmt"
	"os"
	"runtime/metrics"
	"runtime/pprof"
	"time"
)

// GoMemory is the Go runtime's share of the aggregator's memory, sampled
// while it runs: what RSS holds beyond it is memory the Go runtime does
// not account for (the binary, stacks of threads).
type GoMemory struct {
	// PeakTotalMB is the most memory the Go runtime had mapped (heap,
	// stacks, metadata; runtime/metrics /memory/classes/total), released
	// pages included.
	PeakTotalMB float64 `json:"peak_go_total_mb"`
	// PeakHeapMB is the most heap in objects, live or not yet collected.
	PeakHeapMB float64 `json:"peak_go_heap_mb"`
	// PeakLiveMB is the most heap found live by a GC.
	PeakLiveMB float64 `json:"peak_go_live_mb"`
}

// memSampleEvery is how often the sampler reads the runtime's figures: a
// round of 1,000 logreg updates lasts about 300 ms.
const memSampleEvery = 50 * time.Millisecond

// sampleMemory records the Go runtime's peak memory until ctx ends and
// returns it. With profile set, it writes a heap profile there each time
// the live heap has grown by a megabyte over the last one written, so that
// the file shows the heap at (close to) its peak; the runtime's profile
// lags by a GC cycle or two.
func sampleMemory(ctx context.Context, profile string) (func() GoMemory, error) {
	samples := []metrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/gc/heap/live:bytes"},
	}
	var peak GoMemory
	var written uint64
	read := func() error {
		metrics.Read(samples)
		mb := func(i int) float64 { return float64(samples[i].Value.Uint64()) / (1 << 20) }
		peak.PeakTotalMB = max(peak.PeakTotalMB, mb(0)-mb(1))
		peak.PeakHeapMB = max(peak.PeakHeapMB, mb(2))
		peak.PeakLiveMB = max(peak.PeakLiveMB, mb(3))
		if live := samples[3].Value.Uint64(); profile != "" && live > written+1<<20 {
			written = live
			return writeHeapProfile(profile)
		}
		return nil
	}
	if err := read(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() {
		t := time.NewTicker(memSampleEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				done <- read()
				return
			case <-t.C:
				if err := read(); err != nil {
					done <- err
					return
				}
			}
		}
	}()
	return func() GoMemory {
		if err := <-done; err != nil {
			fmt.Fprintln(os.Stderr, "fleet: heap profile:", err)
		}
		return peak
	}, nil
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
