package harness

import (
	"bytes"
	"os"
	"strconv"
)

// threads is the process's OS thread count (Linux /proc), 0 where unknown.
// A pure-Go client adds goroutines, not threads; the count shows what a
// run holds beyond the runtime's own.
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
