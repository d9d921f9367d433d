package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of /proc's CPU times (100 on Linux).
const clockTicks = 100

// procStat is the machine's CPU time from /proc/stat, in ticks summed over
// all cores.
type procStat struct{ user, nice, system, idle, iowait, irq, softirq, steal float64 }

func readProcStat() (procStat, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return procStat{}, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return procStat{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	v := make([]float64, 8)
	for i := range v {
		if v[i], err = strconv.ParseFloat(f[i+1], 64); err != nil {
			return procStat{}, fmt.Errorf("/proc/stat: %w", err)
		}
	}
	return procStat{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]}, nil
}

func (s procStat) busy() float64 {
	return s.user + s.nice + s.system + s.irq + s.softirq + s.steal
}

func (s procStat) total() float64 { return s.busy() + s.idle + s.iowait }

// totalSec is the CPU time of all cores, in seconds.
func (s procStat) totalSec() float64 { return s.total() / clockTicks }

// busySince returns the busy share of all cores' time since then, and the
// share spent in soft interrupts (where veth and bridge forwarding run).
func (s procStat) busySince(then procStat) (busy, softirq float64) {
	t := s.total() - then.total()
	if t <= 0 {
		return 0, 0
	}
	return (s.busy() - then.busy()) / t, (s.softirq - then.softirq) / t
}

// pidCPU returns a process's user+system CPU seconds so far (0 if gone).
func pidCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	// Fields after the name: state is f[0]; utime and stime are the 14th
	// and 15th fields of the line, f[11] and f[12] here.
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / clockTicks
}
