package harness

import (
	"fmt"
	"io"
	"strings"
)

// WriteMarkdown writes the report as markdown tables: one row per channel
// with the headline figures, then the per-round figures side by side.
func WriteMarkdown(w io.Writer, rep *Report) error {
	var b strings.Builder
	s := rep.Setup
	fmt.Fprintf(&b, "%d clients (%d via the function's HTTP handler, invoked %s; %d long-running local), %d rounds, minclients %d, "+
		"%s on %s (%s partition, %s), broker %s.\n\n",
		s.Clients, s.HTTPClients, invocationText(s), s.LocalClients, s.Rounds, s.MinClients,
		s.Model, s.Dataset, s.Partition, shardText(s), s.Broker)
	b.WriteString("| channel | messages | model downloads | aggregator egress | aggregator ingress | all rounds | propagation mean / max | local clients' propagation mean / max | training total / mean | accuracy initial → final |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, c := range rep.Channels {
		fmt.Fprintf(&b, "| %s | %d | %d | %s | %s | %.1f s | %.0f / %.0f ms | %.0f / %.0f ms | %.1f s / %.1f ms | %.4f → %.4f |\n",
			c.Channel, c.Messages, c.ModelDownloads, Bytes(c.Aggregator.BytesSent), Bytes(c.Aggregator.BytesReceived),
			c.RoundsMs/1000, c.PropagationMeanMs, c.PropagationMaxMs, c.LocalPropagationMeanMs, c.LocalPropagationMaxMs,
			c.TrainTotalMs/1000, c.TrainMeanMs, c.InitialAccuracy, c.FinalAccuracy)
	}
	if len(rep.Channels) > 0 {
		b.WriteString("\nPropagation: time until every client held the round's model; mean and max over rounds 2 and later (round 1 includes client start-up).\n")
		b.WriteString("\nPer round (round time / propagation time / test accuracy):\n\n| round |")
		for _, c := range rep.Channels {
			fmt.Fprintf(&b, " %s round | %s propagation | %s accuracy |", c.Channel, c.Channel, c.Channel)
		}
		b.WriteString("\n|--:|")
		b.WriteString(strings.Repeat("--:|--:|--:|", len(rep.Channels)))
		b.WriteString("\n")
		for i := range rep.Channels[0].Rounds {
			fmt.Fprintf(&b, "| %d |", rep.Channels[0].Rounds[i].Round)
			for _, c := range rep.Channels {
				if i >= len(c.Rounds) {
					b.WriteString(" | | |")
					continue
				}
				r := c.Rounds[i]
				fmt.Fprintf(&b, " %.0f ms | %.0f ms | %.4f |", r.DurationMs, r.PropagationMs, r.Accuracy)
			}
			b.WriteString("\n")
		}
	}
	if hasTiming(rep.Channels) {
		writeTiming(&b, rep.Channels)
	}
	if len(rep.Overhead) > 0 {
		writeOverhead(&b, rep.Overhead)
	}
	if same := sameFinalModel(rep.Channels); same != "" {
		fmt.Fprintf(&b, "\nEvery channel produced the same final model, bit for bit (SHA-256 %s…).\n", same[:12])
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(&b, "\n%s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// sameFinalModel returns the final model digest when every channel (more
// than one) produced the same one, and "" otherwise.
func sameFinalModel(cs []*ChannelReport) string {
	if len(cs) < 2 || cs[0].FinalModel == "" {
		return ""
	}
	for _, c := range cs[1:] {
		if c.FinalModel != cs[0].FinalModel {
			return ""
		}
	}
	return cs[0].FinalModel
}

// WriteSweepMarkdown writes one row per (clients, channel) of a sweep.
func WriteSweepMarkdown(w io.Writer, sw *SweepReport) error {
	var b strings.Builder
	if len(sw.Runs) > 0 {
		s := sw.Runs[0].Setup
		shards := "one shard per client"
		if s.MaxExamples > 0 {
			shards += fmt.Sprintf(" of at most %d examples", s.MaxExamples)
		}
		fmt.Fprintf(&b, "Sweep: %d rounds, minclients = clients, %.0f%% of clients via the function's HTTP handler (invoked %s), "+
			"the rest long-running; %s on %s (%s partition, %s), broker %s.\n\n",
			s.Rounds, 100*sw.HTTPShare, invocationText(s), s.Model, s.Dataset, s.Partition, shards, s.Broker)
	}
	b.WriteString("| clients | channel | messages | model downloads | aggregator egress | aggregator ingress | all rounds | propagation mean / max | local clients' propagation mean / max | accuracy |\n")
	b.WriteString("|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range sw.Runs {
		for _, c := range r.Channels {
			fmt.Fprintf(&b, "| %d | %s | %d | %d | %s | %s | %.1f s | %.0f / %.0f ms | %.0f / %.0f ms | %.4f |\n",
				r.Setup.Clients, c.Channel, c.Messages, c.ModelDownloads, Bytes(c.Aggregator.BytesSent),
				Bytes(c.Aggregator.BytesReceived), c.RoundsMs/1000, c.PropagationMeanMs, c.PropagationMaxMs,
				c.LocalPropagationMeanMs, c.LocalPropagationMaxMs, c.FinalAccuracy)
		}
	}
	b.WriteString("\nPropagation: time until every client held the round's model; mean and max over rounds 2 and later (round 1 includes client start-up).\n")
	for _, n := range sw.Notes {
		fmt.Fprintf(&b, "\n%s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func invocationText(s Setup) string {
	if s.Invocation == PerRound {
		if s.MaxInFlight > 0 {
			return fmt.Sprintf("once per round, at most %d at a time", s.MaxInFlight)
		}
		return "once per round"
	}
	return "once for all rounds"
}

func shardText(s Setup) string {
	if s.MaxExamples > 0 {
		return fmt.Sprintf("%d shards of at most %d examples", s.Partitions, s.MaxExamples)
	}
	return fmt.Sprintf("%d shards", s.Partitions)
}

// Bytes formats n in decimal units (1 MB = 10^6 bytes).
func Bytes(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}

// hasTiming reports whether the channels carry the round-time breakdown:
// reports written before it existed lack it, and a table of zeros would
// claim rounds that took no time.
func hasTiming(cs []*ChannelReport) bool {
	for _, c := range cs {
		if c.RoundMeanMs > 0 {
			return true
		}
	}
	return false
}

// writeTiming writes where each channel's round time goes, over rounds 2
// and later, with each round time's ratio to the plain gRPC run's.
func writeTiming(b *strings.Builder, cs []*ChannelReport) {
	var base float64
	for _, c := range cs {
		if c.Channel == GRPC {
			base = c.RoundMeanMs
		}
	}
	b.WriteString("\nTiming, means over rounds 2 and later: round time (and its ratio to gRPC's), the round's publication on the channel " +
		"(Kafka: the round transaction) apart from fan-out, round overhead (round time minus the slowest client's training), " +
		"clients' submit time, propagation; the process's GOMAXPROCS and OS threads per client:\n\n")
	b.WriteString("| channel | round | ratio to grpc | publication | round overhead | client submit | propagation | GOMAXPROCS | threads / client |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, c := range cs {
		ratio := "–"
		if base > 0 {
			ratio = fmt.Sprintf("%.2f", c.RoundMeanMs/base)
		}
		fmt.Fprintf(b, "| %s | %.0f ms | %s | %.1f ms | %.0f ms | %.1f ms | %.0f ms | %d | %.1f |\n",
			c.Channel, c.RoundMeanMs, ratio, c.PublishMeanMs, c.OverheadMeanMs, c.SubmitMeanMs, c.PropagationMeanMs,
			c.GOMAXPROCS, c.ThreadsPerClient)
	}
}

// writeOverhead writes the invocation overhead probe's table.
func writeOverhead(b *strings.Builder, ov []OverheadReport) {
	b.WriteString("\nInvocation overhead (everything but training; medians over the invocations, p90 after the slash). " +
		"Cold: dial + first model + submit, up to the function's answer; the close runs after the answer. " +
		"Warm: a cached connection's lease and health check, the new round's model, submit:\n\n")
	b.WriteString("| channel | GOMAXPROCS | invocations | cold | dial | first model | submit | close (after answer) | warm | warm model | warm submit |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, o := range ov {
		fmt.Fprintf(b, "| %s | %d | %d | %.1f / %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.2f / %.2f ms | %.2f ms | %.2f ms |\n",
			o.Channel, o.GOMAXPROCS, o.Invocations, o.ColdMs, o.ColdP90Ms, o.DialMs, o.ModelMs, o.SubmitMs, o.CloseMs,
			o.WarmMs, o.WarmP90Ms, o.WarmModelMs, o.WarmSubmitMs)
	}
}
