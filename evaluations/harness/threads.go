package harness

import (
	"bytes"
	"os"
	"strconv"
)

// threads is the process's OS thread count (Linux /proc), 0 where unknown.
// librdkafka runs several threads per handle (main, one per broker
// connection, internal), which is what a client weighs beyond its
// goroutines.
func threads() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(line, []byte("Threads:")); ok {
			n, _ := strconv.Atoi(string(bytes.TrimSpace(v)))
			return n
		}
	}
	return 0
}
