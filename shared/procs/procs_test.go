package procs

import (
	"os"
	"runtime"
	"testing"
)

func TestFor(t *testing.T) {
	for _, tc := range []struct{ cpus, handles, want int }{
		{2, 0, 2},        // gRPC only: the runtime's default
		{1, 2, 8},        // one function invocation on 1 vCPU: the floor
		{2, 203, 20},     // 100 Kafka clients and the aggregator
		{2, 2003, 128},   // 1,000 clients: capped
		{16, 4, 16},      // more cores than the floor
		{200, 9000, 200}, // the cap never takes Ps below the cores
	} {
		if got := For(tc.cpus, tc.handles); got != tc.want {
			t.Errorf("For(%d cpus, %d handles) = %d, want %d", tc.cpus, tc.handles, got, tc.want)
		}
	}
}

func TestSet(t *testing.T) {
	if os.Getenv("GOMAXPROCS") != "" {
		t.Setenv("GOMAXPROCS", "")
	}
	defer runtime.SetDefaultGOMAXPROCS()
	runtime.SetDefaultGOMAXPROCS()
	cpus := runtime.GOMAXPROCS(0)
	if got := Set(203); got != For(cpus, 203) || runtime.GOMAXPROCS(0) != got {
		t.Errorf("Set(203) = %d, GOMAXPROCS %d; want %d", got, runtime.GOMAXPROCS(0), For(cpus, 203))
	}
	if got := Set(0); got != cpus || runtime.GOMAXPROCS(0) != cpus {
		t.Errorf("Set(0) = %d, GOMAXPROCS %d; want the default %d", got, runtime.GOMAXPROCS(0), cpus)
	}
	t.Setenv("GOMAXPROCS", "3")
	runtime.GOMAXPROCS(3)
	if got := Set(2003); got != 3 {
		t.Errorf("Set with GOMAXPROCS=3 in the environment = %d, want 3", got)
	}
}
