package nbresult

import (
	"fmt"
	"math"
	"slices"
	"sort"
)

// Row is a cell's median over its successful runs.
type Row struct {
	Cell
	// Command is the command line of the cell's last run.
	Command      string
	Runs, Failed int
	ModelBytes   int64
	Messages     int64
	// TotalMs is the job's rounds summed; RoundMs a round's duration and
	// PropMs the time to reach all devices, means over rounds 2..R;
	// PropMaxMs the slowest of those rounds' times to reach all; FirstMs
	// round 1's time to reach all.
	TotalMs, RoundMs, PropMs, PropMaxMs, FirstMs float64
	// AggEgress and BrokerEgress are bytes per model sent; AggPerModel the
	// aggregator's egress per model ÷ S.
	AggEgress, AggPerModel, BrokerEgress float64
	BoundMs, Efficiency                  float64
	// Busy is the machine's CPU busy share (all processes), Ours the share
	// of the cell's own processes.
	Busy, Ours float64
	// VsGRPC is PropMs ÷ gRPC's PropMs in the same model, N, link and
	// mode; NaN without a successful gRPC cell.
	VsGRPC float64
	// Errors are the failed runs' errors.
	Errors []string
}

// Median is the median of v; NaN for none.
func Median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// Rows groups results by cell, medians over successful runs, sorted by
// model size, link, mode, clients and channel.
func Rows(rs []*Result) []*Row {
	by := map[string][]*Result{}
	var keys []string
	for _, r := range rs {
		k := r.Key()
		if _, ok := by[k]; !ok {
			keys = append(keys, k)
		}
		by[k] = append(by[k], r)
	}
	var out []*Row
	for _, k := range keys {
		group := by[k]
		rw := &Row{Cell: group[0].Cell, Command: group[len(group)-1].Command}
		var msgs, total, round, prop, pmax, first, egr, per, brk, bound, eff, busy, ours []float64
		for _, r := range group {
			if r.Error != "" {
				rw.Failed++
				rw.Errors = append(rw.Errors, r.Error)
				continue
			}
			rw.Runs++
			rw.ModelBytes = r.ModelBytes
			msgs = append(msgs, float64(r.Messages))
			if len(r.PerRound) > 0 {
				total = append(total, r.TotalMs())
			}
			round, prop, pmax = append(round, r.RoundMs), append(prop, r.PropagationMs), append(pmax, r.PropagationMaxMs)
			first = append(first, r.FirstPropagationMs)
			egr, per = append(egr, float64(r.AggEgressBytes)/float64(r.ModelsSent)), append(per, r.AggEgressPerModel)
			brk = append(brk, float64(r.BusiestBrokerOut)/float64(r.ModelsSent))
			bound, eff = append(bound, r.BoundMs), append(eff, r.Efficiency)
			busy, ours = append(busy, r.CPU.MachineBusy), append(ours, r.CPU.OursShare)
		}
		rw.Messages = int64(Median(msgs))
		rw.TotalMs = Median(total)
		rw.RoundMs, rw.PropMs, rw.PropMaxMs, rw.FirstMs = Median(round), Median(prop), Median(pmax), Median(first)
		rw.AggEgress, rw.AggPerModel, rw.BrokerEgress = Median(egr), Median(per), Median(brk)
		rw.BoundMs, rw.Efficiency, rw.Busy, rw.Ours = Median(bound), Median(eff), Median(busy), Median(ours)
		out = append(out, rw)
	}
	chOrder := map[string]int{GRPC: 0, Kafka1: 1, Kafka3: 2}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		sa, _ := ModelBytes(a.Model)
		sb, _ := ModelBytes(b.Model)
		switch {
		case sa != sb:
			return sa < sb
		case a.LinkBps != b.LinkBps:
			return a.LinkBps < b.LinkBps
		case a.Mode != b.Mode:
			return a.Mode < b.Mode
		case a.Clients != b.Clients:
			return a.Clients < b.Clients
		}
		return chOrder[a.Channel] < chOrder[b.Channel]
	})
	grpc := map[string]float64{}
	for _, r := range out {
		if r.Channel == GRPC && r.Runs > 0 {
			grpc[PeerKey(r.Cell)] = r.PropMs
		}
	}
	for _, r := range out {
		r.VsGRPC = math.NaN()
		if g, ok := grpc[PeerKey(r.Cell)]; ok && r.Runs > 0 && g > 0 {
			r.VsGRPC = r.PropMs / g
		}
	}
	return out
}

// Sec prints milliseconds as 850 ms or 1.25 s; NaN as "–".
func Sec(ms float64) string {
	if math.IsNaN(ms) {
		return "–"
	}
	if ms < 1000 {
		return fmt.Sprintf("%.0f ms", ms)
	}
	return fmt.Sprintf("%.2f s", ms/1000)
}

// SizeLabel prints a model's size: 10 MB, 32 kB.
func SizeLabel(s int64) string {
	if s >= 1e6 {
		return fmt.Sprintf("%.0f MB", float64(s)/1e6)
	}
	return fmt.Sprintf("%.0f kB", float64(s)/1e3)
}

// Crossover compares one Kafka channel's time to reach all devices with
// gRPC's for one model, link and mode, at every N both measured.
type Crossover struct {
	Model   string
	LinkBps int64
	Mode    string
	// Channel is the Kafka channel (kafka1 or kafka3).
	Channel string
	// KafkaFirst are the N (ascending) at which Channel reached all
	// devices before gRPC; GRPCFirst those at which it did not.
	KafkaFirst, GRPCFirst []int
	// Kafka and GRPC are each channel's measured series: N and the time to
	// reach all devices (ms), in the rows' order.
	Kafka, GRPC Series
}

// Series is one channel's time to reach all devices against N.
type Series struct{ N, Ms []float64 }

// Crossovers compares, per model, link and mode (in the rows' order), each
// Kafka channel with gRPC at the N both measured successfully. Groups
// without gRPC are left out, as are Kafka channels not measured there.
func Crossovers(rows []*Row) []Crossover {
	groups := map[string]map[string]*Series{}
	var order []string
	first := map[string]*Row{}
	for _, r := range rows {
		if r.Runs == 0 {
			continue
		}
		g := fmt.Sprintf("%s|%d|%s", r.Model, r.LinkBps, r.Mode)
		if groups[g] == nil {
			groups[g] = map[string]*Series{}
			order = append(order, g)
			first[g] = r
		}
		s := groups[g][r.Channel]
		if s == nil {
			s = &Series{}
			groups[g][r.Channel] = s
		}
		s.N, s.Ms = append(s.N, float64(r.Clients)), append(s.Ms, r.PropMs)
	}
	var out []Crossover
	for _, g := range order {
		gr := groups[g][GRPC]
		if gr == nil {
			continue
		}
		for _, ch := range []string{Kafka1, Kafka3} {
			k := groups[g][ch]
			if k == nil {
				continue
			}
			c := Crossover{Model: first[g].Model, LinkBps: first[g].LinkBps, Mode: first[g].Mode, Channel: ch, Kafka: *k, GRPC: *gr}
			for i, n := range k.N {
				for j, m := range gr.N {
					if m == n {
						if k.Ms[i] < gr.Ms[j] {
							c.KafkaFirst = append(c.KafkaFirst, int(n))
						} else {
							c.GRPCFirst = append(c.GRPCFirst, int(n))
						}
					}
				}
			}
			slices.Sort(c.KafkaFirst)
			slices.Sort(c.GRPCFirst)
			out = append(out, c)
		}
	}
	return out
}

// The testbed's headline goal: with a 10 MB model, 100 long-running
// clients and 1 Gbit/s links, Kafka with 3 brokers reaches all devices in
// at most GoalRatio of gRPC's time.
const (
	GoalModel   = "synthetic:10"
	GoalClients = 100
	GoalLinkBps = 1e9
	GoalRatio   = 0.5
)

// Saturated is the machine CPU busy share from which a cell measures the
// CPU rather than the links.
const Saturated = 0.95

// GoalRows returns the gRPC and kafka3 rows of the goal's cell, nil where
// that channel has no successful run.
func GoalRows(rows []*Row) (grpc, kafka3 *Row) {
	for _, r := range rows {
		if r.Model == GoalModel && r.Clients == GoalClients && r.LinkBps == GoalLinkBps && r.Mode == ModeLong && r.Runs > 0 {
			switch r.Channel {
			case GRPC:
				grpc = r
			case Kafka3:
				kafka3 = r
			}
		}
	}
	return grpc, kafka3
}

// GoalMet says whether kafka3's time to reach all devices is at most
// GoalRatio of gRPC's.
func GoalMet(grpc, kafka3 *Row) bool { return kafka3.PropMs <= GoalRatio*grpc.PropMs }

// Group is the rows one command measured.
type Group struct {
	// Label is the command line, or a placeholder when it was not recorded.
	Label string
	Rows  []*Row
}

// ByCommand groups rows by the command that measured them, in the order
// the commands first appear, so that every page prints a table under the
// command that regenerates it.
func ByCommand(rows []*Row) []Group {
	var out []Group
	at := map[string]int{}
	for _, r := range rows {
		i, ok := at[r.Command]
		if !ok {
			label := r.Command
			if label == "" {
				label = "(command not recorded)"
			}
			i = len(out)
			at[r.Command] = i
			out = append(out, Group{Label: label})
		}
		out[i].Rows = append(out[i].Rows, r)
	}
	return out
}

// GoalCPUNote says how the goal cell's runs used the machine: whether its
// CPU was saturated (Saturated) during kafka3's and gRPC's runs, how close
// each fan-out came to its link bound, and, when the CPU was saturated,
// that the ratio measures CPU as well as links. Both result pages judge
// the goal with it.
func GoalCPUNote(grpc, kafka3 *Row) string {
	busy := fmt.Sprintf("%.0f %% busy during kafka3's runs and %.0f %% during gRPC's", 100*kafka3.Busy, 100*grpc.Busy)
	var s string
	switch ks, gs := kafka3.Busy >= Saturated, grpc.Busy >= Saturated; {
	case ks && gs:
		s = fmt.Sprintf("The machine's CPU was saturated (%s; saturated: ≥ %.0f %%)", busy, 100*Saturated)
	case ks || gs:
		s = fmt.Sprintf("The machine's CPU was saturated during one channel's runs only (%s; saturated: ≥ %.0f %%)", busy, 100*Saturated)
	default:
		s = fmt.Sprintf("The machine's CPU was not saturated (%s; saturated: ≥ %.0f %%)", busy, 100*Saturated)
	}
	s += fmt.Sprintf(", and the fan-outs ran at %.0f %% (kafka3) and %.0f %% (gRPC) of their links' rate (bounds N·S/(K·L) %s and N·S/L %s, %.2f× at line rate)",
		100*kafka3.Efficiency, 100*grpc.Efficiency, Sec(kafka3.BoundMs), Sec(grpc.BoundMs), kafka3.BoundMs/grpc.BoundMs)
	if kafka3.Busy >= Saturated || grpc.Busy >= Saturated {
		s += ": the ratio is measured where CPU, not only the links, limits the channels"
	}
	return s + "."
}
