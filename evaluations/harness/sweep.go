package harness

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SweepReport is one evaluation per number of clients, to show how the
// channels' costs grow with the federation.
type SweepReport struct {
	Sizes     []int     `json:"sizes"`
	HTTPShare float64   `json:"http_share"`
	StartedAt time.Time `json:"started_at"`
	WallMs    float64   `json:"wall_ms"`
	Runs      []*Report `json:"runs"`
	Notes     []string  `json:"notes,omitempty"`
}

// Sweep runs cfg once per size in sizes (cfg.Clients is ignored), smallest
// first, sharing the data catalog.
func Sweep(ctx context.Context, cfg Config, sizes []int) (*SweepReport, error) {
	if len(sizes) == 0 {
		return nil, fmt.Errorf("-sweep: no sizes")
	}
	cfg.Clients = sizes[0]
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	start := time.Now()
	sw := &SweepReport{Sizes: sizes, HTTPShare: cfg.HTTPShare, StartedAt: start.UTC()}
	for _, n := range sizes {
		c := cfg
		c.Clients = n
		cfg.Log.Info("sweep point", "clients", n)
		rep, err := Run(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("sweep at %d clients: %w", n, err)
		}
		sw.Runs = append(sw.Runs, rep)
	}
	sw.WallMs = msSince(start)
	return sw, nil
}

// ParseSizes parses a comma-separated list of client counts.
func ParseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-sweep: %q is not a positive number of clients", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-sweep %q: no sizes", s)
	}
	return out, nil
}
