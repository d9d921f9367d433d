package main

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/fdxkafka/fdxkafka/evaluations/netbench/nbresult"
)

// pocCell is one model, N, link and mode: its channels' rows (nil where a
// channel was not measured under the command).
type pocCell struct {
	first *nbresult.Row
	ch    map[string]*nbresult.Row
}

// renderNetbench renders netbench.json as the PoC's table: per model, N,
// link and mode, each channel's messages, total time and time to reach
// all devices, grouped by the command that measured them; then the
// crossover per model, link and mode and the 10 MB / 100-client /
// 1 Gbit/s goal. The figures are nbresult's medians, the ones the
// testbed's own page shows.
func renderNetbench(raw []byte) (string, error) {
	rs, err := nbresult.Parse(raw)
	if err != nil {
		return "", err
	}
	if len(rs) == 0 {
		return "", errors.New("netbench results with no runs")
	}
	rows := nbresult.Rows(rs)

	var b strings.Builder
	b.WriteString("Per channel (gRPC; Kafka with 1 broker, `kafka1`; Kafka with 3 brokers, `kafka3`): " +
		"**messages** transmitted, **total** time (the job's rounds summed) and **reach all**, " +
		"the time from a model's publication until every client holds it (mean over rounds 2..R). " +
		"Each figure is the median over the cell's successful runs; ÷ gRPC compares the times to reach all " +
		"(< 1: Kafka first); CPU is the machine's two cores' busy share during each channel's runs " +
		"(every process, the benchmark's and others'). – : not measured, or no successful run.\n\n")

	// One table per command line, in the order the commands first appear
	// among the sorted rows, as on the testbed's page.
	for _, g := range nbresult.ByCommand(rows) {
		fmt.Fprintf(&b, "```\nsudo %s\n```\n\n", g.Label)
		b.WriteString(pocTable(g.Rows))
		b.WriteString("\n")
	}
	var failed []string
	for _, r := range rows {
		if r.Failed > 0 {
			failed = append(failed, fmt.Sprintf("%s (%d of %d)", r.Key(), r.Failed, r.Runs+r.Failed))
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(&b, "Failed runs, left out of the medians: %s; their errors are on the testbed's page.\n\n", strings.Join(failed, ", "))
	}

	b.WriteString("**Crossover**: per model, link and mode, the smallest N measured from which each Kafka channel " +
		"reaches all devices before gRPC (medians compared at the N both channels measured).\n\n")
	b.WriteString(pocCrossovers(rows))
	b.WriteString("\n")
	b.WriteString(pocGoal(rows))
	b.WriteString("\nEvery column (egress per model, link bounds, rounds, CPU of our processes), the failed runs' errors, " +
		"a fitted crossover and the plots: [netbench/README.md](netbench/README.md), written by " +
		"`go run ./evaluations/netbench report` from the same JSON.\n")
	return b.String(), nil
}

// pocTable is one command's table: a line per model, N, link and mode.
func pocTable(rows []*nbresult.Row) string {
	var cells []*pocCell
	byKey := map[string]*pocCell{}
	for _, r := range rows {
		k := nbresult.PeerKey(r.Cell)
		c := byKey[k]
		if c == nil {
			c = &pocCell{first: r, ch: map[string]*nbresult.Row{}}
			byKey[k] = c
			cells = append(cells, c)
		}
		c.ch[r.Channel] = r
	}
	var b strings.Builder
	b.WriteString("| model (S) | N | link | clients |")
	for _, ch := range nbresult.Channels {
		fmt.Fprintf(&b, " %s messages | %s total | %s reach all |", chName(ch), chName(ch), chName(ch))
	}
	b.WriteString(" kafka1 ÷ gRPC | kafka3 ÷ gRPC | CPU busy (gRPC / kafka1 / kafka3) |\n")
	b.WriteString("|---|--:|---|---|" + strings.Repeat("--:|", 3*len(nbresult.Channels)+3) + "\n")
	for _, c := range cells {
		r := c.first
		fmt.Fprintf(&b, "| %s (%s) | %d | %s | %s |", r.Model, sizeLabel(c), r.Clients, nbresult.RateLabel(r.LinkBps), r.Mode)
		var cpu []string
		for _, ch := range nbresult.Channels {
			if x := c.ch[ch]; x != nil && x.Runs > 0 {
				fmt.Fprintf(&b, " %d | %s | %s |", x.Messages, nbresult.Sec(x.TotalMs), nbresult.Sec(x.PropMs))
				cpu = append(cpu, fmt.Sprintf("%.0f", 100*x.Busy))
			} else {
				b.WriteString(" – | – | – |")
				cpu = append(cpu, "–")
			}
		}
		for _, ch := range []string{nbresult.Kafka1, nbresult.Kafka3} {
			if x := c.ch[ch]; x != nil && x.Runs > 0 && !math.IsNaN(x.VsGRPC) {
				fmt.Fprintf(&b, " %.2f× |", x.VsGRPC)
			} else {
				b.WriteString(" – |")
			}
		}
		fmt.Fprintf(&b, " %s %% |\n", strings.Join(cpu, " / "))
	}
	return b.String()
}

func chName(ch string) string {
	if ch == nbresult.GRPC {
		return "gRPC"
	}
	return ch
}

// sizeLabel is the cell's model size: as measured, or from the model's
// name where no run succeeded.
func sizeLabel(c *pocCell) string {
	for _, r := range c.ch {
		if r.Runs > 0 && r.ModelBytes > 0 {
			return nbresult.SizeLabel(r.ModelBytes)
		}
	}
	if s, err := nbresult.ModelBytes(c.first.Model); err == nil {
		return nbresult.SizeLabel(s)
	}
	return "?"
}

// pocCrossovers is a line per model, link and mode: for each Kafka channel,
// the smallest N measured at which it reached all devices before gRPC.
func pocCrossovers(rows []*nbresult.Row) string {
	size := map[string]int64{}
	for _, r := range rows {
		if r.Runs > 0 {
			size[r.Model] = r.ModelBytes
		}
	}
	var b strings.Builder
	var group string
	var parts []string
	flush := func() {
		if group != "" {
			fmt.Fprintf(&b, "- %s: %s.\n", group, strings.Join(parts, "; "))
		}
	}
	for _, c := range nbresult.Crossovers(rows) {
		g := fmt.Sprintf("%s (%s), %s, %s", c.Model, nbresult.SizeLabel(size[c.Model]), nbresult.RateLabel(c.LinkBps), c.Mode)
		if g != group {
			flush()
			group, parts = g, nil
		}
		parts = append(parts, crossoverText(c))
	}
	flush()
	if b.Len() == 0 {
		return "- No model, link and mode has gRPC and a Kafka channel measured.\n"
	}
	return b.String()
}

// crossoverText says from which N the Kafka channel came first, and where
// gRPC did.
func crossoverText(c nbresult.Crossover) string {
	all := slices.Sorted(slices.Values(append(slices.Clone(c.KafkaFirst), c.GRPCFirst...)))
	switch {
	case len(all) == 0:
		return c.Channel + ": no N measured on both"
	case len(c.KafkaFirst) == 0:
		return fmt.Sprintf("%s: gRPC first at every N measured (N = %s)", c.Channel, ints(all))
	}
	n0 := c.KafkaFirst[0]
	var below, above []int
	for _, n := range c.GRPCFirst {
		if n < n0 {
			below = append(below, n)
		} else {
			above = append(above, n)
		}
	}
	s := fmt.Sprintf("%s: Kafka first from N = %d", c.Channel, n0)
	if len(below) == 0 {
		s += ", the smallest N measured, so the crossover is at or below it"
	} else {
		s += fmt.Sprintf(", gRPC first at N = %s", ints(below))
	}
	if len(above) > 0 {
		s += fmt.Sprintf(", gRPC first again at N = %s", ints(above))
	}
	return s + fmt.Sprintf(" (N measured: %s)", ints(all))
}

func ints(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

// pocGoal judges the PoC's goal: 10 MB, 100 clients, 1 Gbit/s, kafka3
// reaching all devices in at most half gRPC's time.
func pocGoal(rows []*nbresult.Row) string {
	model := nbresult.GoalModel
	if n, err := nbresult.ModelBytes(model); err == nil {
		model = nbresult.SizeLabel(n)
	}
	head := fmt.Sprintf("**Goal** (%s model, %d long-running clients, %s links: kafka3 reaches all devices in ≤ %.1f× gRPC's time): ",
		model, nbresult.GoalClients, nbresult.RateLabel(nbresult.GoalLinkBps), nbresult.GoalRatio)
	g, k := nbresult.GoalRows(rows)
	if g == nil || k == nil {
		return head + "not measured (no successful gRPC and kafka3 runs of that cell).\n"
	}
	verdict, cmp := "**not met**", "above"
	if nbresult.GoalMet(g, k) {
		verdict, cmp = "**met**", "within"
	}
	s := head + fmt.Sprintf("%s: kafka3 reaches all devices in %s, gRPC in %s, %.2f×, %s the %.1f× goal. ",
		verdict, nbresult.Sec(k.PropMs), nbresult.Sec(g.PropMs), k.PropMs/g.PropMs, cmp, nbresult.GoalRatio)
	return s + nbresult.GoalCPUNote(g, k) + "\n"
}
