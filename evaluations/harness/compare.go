package harness

import (
	"fmt"
	"io"
	"slices"
	"time"
)

// Figures are the medians, over the runs, of one build's figures for one
// client count and channel.
type Figures struct {
	RoundMs           float64  `json:"round_mean_ms"`
	RoundOverheadMs   float64  `json:"round_overhead_mean_ms"`
	PropagationMs     float64  `json:"propagation_mean_ms"`
	ClientSubmitMs    float64  `json:"client_submit_mean_ms"`
	ThreadsPerClient  float64  `json:"threads_per_client"`
	RoundsMs          float64  `json:"rounds_ms"`
	FinalModelSHA256s []string `json:"final_model_sha256s"`
}

// ComparedSize is one client count's figures for both builds.
type ComparedSize struct {
	Clients int `json:"clients"`
	// Builds maps "old" and "new" to channel name to figures.
	Builds map[string]map[string]*Figures `json:"builds"`
	// Ratio maps build to the median over runs of Kafka's mean round time
	// over gRPC's (rounds 2 and later), the figure the channels race on.
	Ratio map[string]float64 `json:"kafka_grpc_round_ratio"`
}

// Comparison is two builds of the stress tool measured alternately (the
// command evaluations/buildcompare): medians of their sweeps' figures.
type Comparison struct {
	Command   string            `json:"command"`
	Builds    map[string]string `json:"builds"` // build -> description
	Broker    string            `json:"broker"`
	Runs      int               `json:"runs"`
	Rounds    int               `json:"rounds"`
	StartedAt time.Time         `json:"started_at"`
	WallMs    float64           `json:"wall_ms"`
	Sizes     []*ComparedSize   `json:"sizes"`
}

// CompareSweeps takes the medians over each build's sweeps (sweeps maps
// build name to its runs) per client count and channel. Every client
// count must have been measured by both builds.
func CompareSweeps(sweeps map[string][]*SweepReport) ([]*ComparedSize, error) {
	bySize := map[int]*ComparedSize{}
	type key struct {
		build, channel string
		clients        int
	}
	samples := map[key][]*ChannelReport{}
	ratios := map[key][]float64{}
	for build, sws := range sweeps {
		for _, sw := range sws {
			for _, r := range sw.Runs {
				n := r.Setup.Clients
				if bySize[n] == nil {
					bySize[n] = &ComparedSize{Clients: n, Builds: map[string]map[string]*Figures{}, Ratio: map[string]float64{}}
				}
				rounds := map[string]float64{}
				for _, c := range r.Channels {
					samples[key{build, c.Channel, n}] = append(samples[key{build, c.Channel, n}], c)
					rounds[c.Channel] = c.RoundMeanMs
				}
				if k, g := rounds["kafka"], rounds["grpc"]; k > 0 && g > 0 {
					ratios[key{build, "", n}] = append(ratios[key{build, "", n}], k/g)
				}
			}
		}
	}
	for k, cs := range samples {
		s := bySize[k.clients]
		if s.Builds[k.build] == nil {
			s.Builds[k.build] = map[string]*Figures{}
		}
		f := &Figures{
			RoundMs:          median(cs, func(c *ChannelReport) float64 { return c.RoundMeanMs }),
			RoundOverheadMs:  median(cs, func(c *ChannelReport) float64 { return c.OverheadMeanMs }),
			PropagationMs:    median(cs, func(c *ChannelReport) float64 { return c.PropagationMeanMs }),
			ClientSubmitMs:   median(cs, func(c *ChannelReport) float64 { return c.SubmitMeanMs }),
			ThreadsPerClient: median(cs, func(c *ChannelReport) float64 { return c.ThreadsPerClient }),
			RoundsMs:         median(cs, func(c *ChannelReport) float64 { return c.RoundsMs }),
		}
		for _, c := range cs {
			f.FinalModelSHA256s = append(f.FinalModelSHA256s, c.FinalModel)
		}
		s.Builds[k.build][k.channel] = f
	}
	for k, rs := range ratios {
		bySize[k.clients].Ratio[k.build] = medianOf(rs)
	}
	var out []*ComparedSize
	for _, s := range bySize {
		if len(s.Builds) != len(sweeps) {
			return nil, fmt.Errorf("%d clients: measured by %d builds, want %d", s.Clients, len(s.Builds), len(sweeps))
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *ComparedSize) int { return a.Clients - b.Clients })
	return out, nil
}

func median(cs []*ChannelReport, f func(*ChannelReport) float64) float64 {
	vs := make([]float64, len(cs))
	for i, c := range cs {
		vs[i] = f(c)
	}
	return medianOf(vs)
}

func medianOf(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// WriteComparisonMarkdown writes rep as a table: per client count, each build's
// Kafka/gRPC round ratio and Kafka figures, with gRPC's beside them.
func WriteComparisonMarkdown(w io.Writer, rep *Comparison) {
	fmt.Fprintf(w, "Medians of %d runs of each build, %d rounds (figures over rounds 2 and later), %s broker; old: %s, new: %s.\n\n",
		rep.Runs, rep.Rounds, rep.Broker, rep.Builds["old"], rep.Builds["new"])
	fmt.Fprintln(w, "| clients | build | Kafka/gRPC round time | round overhead Kafka / gRPC | propagation Kafka / gRPC | client submit Kafka / gRPC | threads per Kafka client |")
	fmt.Fprintln(w, "|--:|---|--:|--:|--:|--:|--:|")
	for _, s := range rep.Sizes {
		for _, build := range []string{"old", "new"} {
			k, g := s.Builds[build]["kafka"], s.Builds[build]["grpc"]
			if k == nil || g == nil {
				continue
			}
			fmt.Fprintf(w, "| %d | %s | %.2f | %.0f / %.0f ms | %.0f / %.0f ms | %.1f / %.1f ms | %.1f |\n", s.Clients, rep.Builds[build],
				s.Ratio[build], k.RoundOverheadMs, g.RoundOverheadMs, k.PropagationMs, g.PropagationMs, k.ClientSubmitMs, g.ClientSubmitMs, k.ThreadsPerClient)
		}
	}
}
