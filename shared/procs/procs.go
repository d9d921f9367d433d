// Package procs sizes GOMAXPROCS for processes that hold many librdkafka
// handles (confluent-kafka-go, cgo).
//
// Why more Ps than cores: every librdkafka producer parks one goroutine in
// a blocking C call (its event poller, rd_kafka_queue_poll, 100 ms at a
// time), and every waiting model reader another (Consumer.Poll). A
// goroutine inside a cgo call keeps its P until sysmon retakes it, which
// takes from 20 µs up to 10 ms when sysmon has backed off. With GOMAXPROCS
// equal to 2 cores and hundreds of such goroutines, runnable Go work —
// training, delivery reports, the aggregator's round loop — waits for a P
// although the cores are idle: a Kafka run with 100 clients kept the two
// cores 30% busy where gRPC kept them 90% busy for the same work. Extra Ps cost little (a P is a scheduler slot, not a thread; threads
// exist for the C calls anyway), so the floor gives blocked C calls room,
// and the per-handle term keeps a slot free per PerP parked goroutines.
// The cost of too many Ps is more GC worker and idle-spinning overhead,
// hence the cap.
//
// A process without librdkafka handles (a gRPC-only run) keeps the Go
// default: its goroutines block in the Go netpoller, which frees the P.
package procs

import (
	"os"
	"runtime"
)

const (
	// Floor is the fewest Ps for a process with any librdkafka handle. In
	// stress runs on 2 cores, GOMAXPROCS 8 took the Kafka/gRPC round-time
	// ratio from 1.65 to 1.16 at 10 clients, and from 1.45 to 0.8 with
	// today's client settings (cheaper dial, 500 ms model fetch wait).
	Floor = 8
	// PerP handles share one P above the floor: a poller spends nearly all
	// its time in C, and a P freed by sysmon serves the others' returns.
	// At 1,000 clients on 2 cores, 16, 64 and 128 Ps gave 4.6, 4.2 and
	// 3.5 s rounds (one run each, a shared machine).
	PerP = 16
	// Max caps the Ps: 1,000 clients (2,003 handles) get 128.
	Max = 128
)

// For returns the GOMAXPROCS for a process with cpus usable CPUs holding
// handles librdkafka handles: cpus when it holds none, otherwise
// max(cpus, Floor) + handles/PerP, at most max(cpus, Max).
func For(cpus, handles int) int {
	if handles <= 0 {
		return cpus
	}
	return min(max(cpus, Floor)+handles/PerP, max(cpus, Max))
}

// Set sizes GOMAXPROCS for handles librdkafka handles and returns the value
// in effect; Set(0) restores the runtime's default. The CPU count it starts
// from is the runtime's default, which honours a container's CPU limit.
// An operator's GOMAXPROCS environment variable wins: Set then changes
// nothing.
func Set(handles int) int {
	if os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0)
	}
	runtime.SetDefaultGOMAXPROCS()
	cpus := runtime.GOMAXPROCS(0)
	n := For(cpus, handles)
	if n != cpus {
		runtime.GOMAXPROCS(n)
	}
	return n
}
