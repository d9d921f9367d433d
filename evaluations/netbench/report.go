package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/fdxkafka/fdxkafka/evaluations/netbench/nbresult"
	"github.com/fdxkafka/fdxkafka/internal/cli"
)

// File names in the results directory.
const (
	resultsJSON = nbresult.FileName
	// readmePath is the README the tool writes, relative to the repository.
	readmePath = "evaluations/netbench/README.md"
)

const resultsNote = "netbench: Kafka vs gRPC on tc-shaped links between network namespaces; see evaluations/README.md#over-a-real-network"

// writeResults merges rs into dir's JSON (a cell run again replaces its
// earlier runs) and rewrites the plots and the README at readme.
func writeResults(dir, readme string, rs []*Result, merge bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var all []*Result
	if merge {
		old, err := readResults(dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		fresh := map[string]bool{}
		for _, r := range rs {
			fresh[r.Key()] = true
		}
		for _, r := range old {
			if !fresh[r.Key()] {
				all = append(all, r)
			}
		}
	}
	all = append(all, rs...)
	b, err := json.MarshalIndent(nbresult.File{Note: resultsNote, Results: all}, "", " ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, resultsJSON), append(b, '\n'), 0o644); err != nil {
		return err
	}
	return render(dir, readme, all, io.Discard)
}

func readResults(dir string) ([]*Result, error) {
	b, err := os.ReadFile(filepath.Join(dir, resultsJSON))
	if err != nil {
		return nil, err
	}
	return nbresult.Parse(b)
}

// runReport is `netbench report`: the markdown and plots from the JSON.
func runReport(args []string, stdout, stderr io.Writer) error {
	fset := flag.NewFlagSet("netbench report", flag.ContinueOnError)
	fset.SetOutput(stderr)
	out := fset.String("out", "evaluations/results/netbench", "results directory holding "+resultsJSON)
	readme := fset.String("readme", readmePath, "the README to write (tables from the JSON)")
	if err := cli.Parse(fset, args); err != nil {
		return err
	}
	rs, err := readResults(*out)
	if err != nil {
		return err
	}
	return render(*out, *readme, rs, stdout)
}

// row is a cell's median over its successful runs.
type row = nbresult.Row

// rows groups results by cell, medians over successful runs, sorted by
// model size, link, mode, clients and channel.
func rows(rs []*Result) []*row { return nbresult.Rows(rs) }

func mb(b float64) string { return fmt.Sprintf("%.2f", b/1e6) }

// sec prints a time (850 ms, 1.25 s), sizeLabel a model size (10 MB).
var sec, sizeLabel = nbresult.Sec, nbresult.SizeLabel

// render writes the README (tables grouped by the command that measured
// them, goals, crossover) and the plots, and prints the tables.
func render(dir, readme string, rs []*Result, stdout io.Writer) error {
	rws := rows(rs)
	var b strings.Builder
	// One table per command line, in the order the commands first appear.
	for _, g := range nbresult.ByCommand(rws) {
		fmt.Fprintf(&b, "```\nsudo %s\n```\n\n", g.Label)
		b.WriteString(table(g.Rows))
		b.WriteString("\n")
	}
	b.WriteString(failures(rws))
	b.WriteString(goals(rws))
	b.WriteString("\n")
	b.WriteString(crossovers(rws))
	if _, err := io.WriteString(stdout, b.String()); err != nil {
		return err
	}
	plots, err := writePlots(dir, rws)
	if err != nil {
		return err
	}
	if readme == "" {
		return nil
	}
	rel := dir
	if r, err := filepath.Rel(filepath.Dir(readme), dir); err == nil {
		rel = r
	}
	var pl strings.Builder
	for _, p := range plots {
		fmt.Fprintf(&pl, "![%s](%s)\n", p, filepath.ToSlash(filepath.Join(rel, p)))
	}
	md := strings.NewReplacer("{{RESULTS}}", b.String(), "{{PLOTS}}", pl.String(),
		"{{JSON}}", filepath.ToSlash(filepath.Join(rel, resultsJSON))).Replace(readmeTemplate)
	return os.WriteFile(readme, []byte(md), 0o644)
}

// table is the markdown table of rows.
func table(rws []*row) string {
	var b strings.Builder
	b.WriteString("| model (S) | N | link | clients | channel | messages | round | time to reach all (mean / max) | ÷ gRPC | aggregator egress per model | ÷ S | busiest broker egress per model | bound N·S/(K·L) | achieved ÷ limit | machine CPU busy (ours) | runs |\n")
	b.WriteString("|---|--:|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rws {
		if r.Runs == 0 {
			fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | – | – | – | – | – | – | – | – | – | – | 0 (%s) |\n",
				r.Model, r.Clients, rateLabel(r.LinkBps), r.Mode, r.Channel, shortErr(r.Errors[0]))
			continue
		}
		vs, brk := "–", "–"
		if !math.IsNaN(r.VsGRPC) && r.Channel != chGRPC {
			vs = fmt.Sprintf("%.2f×", r.VsGRPC)
		}
		if r.Channel != chGRPC {
			brk = mb(r.BrokerEgress) + " MB"
		}
		runs := fmt.Sprint(r.Runs)
		if r.Failed > 0 {
			runs += fmt.Sprintf(" (+%d failed, below)", r.Failed)
		}
		fmt.Fprintf(&b, "| %s (%s) | %d | %s | %s | %s | %d | %s | %s / %s | %s | %s MB | %.2f | %s | %s | %.2f | %.0f%% (%.0f%%) | %s |\n",
			r.Model, sizeLabel(r.ModelBytes), r.Clients, rateLabel(r.LinkBps), r.Mode, r.Channel, r.Messages,
			sec(r.RoundMs), sec(r.PropMs), sec(r.PropMaxMs), vs, mb(r.AggEgress), r.AggPerModel, brk,
			sec(r.BoundMs), r.Efficiency, 100*r.Busy, 100*r.Ours, runs)
	}
	return b.String()
}

// goals checks the figures against the testbed's goals: Kafka with 3
// brokers reaching 100 clients with a 10 MB model over 1 Gbit/s links in
// at most half gRPC's time; the aggregator's egress per model over Kafka
// at most 1.1 S; achieved ÷ limit at least 0.8.
func goals(rws []*row) string {
	var b strings.Builder
	b.WriteString("### Goals\n\n")
	g, k := nbresult.GoalRows(rws)
	if g != nil && k != nil {
		verdict := "not met"
		if nbresult.GoalMet(g, k) {
			verdict = "met"
		}
		fmt.Fprintf(&b, "- 10 MB model, 100 clients, 1 Gbit/s: kafka3 reaches all devices in %s, gRPC in %s: %.2f× (goal ≤ 0.5×): **%s**. %s\n",
			sec(k.PropMs), sec(g.PropMs), k.PropMs/g.PropMs, verdict, nbresult.GoalCPUNote(g, k))
	} else {
		b.WriteString("- 10 MB model, 100 clients, 1 Gbit/s: not measured (no successful grpc and kafka3 runs of that cell).\n")
	}
	var over []string
	kafkaCells := 0
	for _, r := range rws {
		if r.Runs > 0 && r.Channel != chGRPC {
			kafkaCells++
			if r.AggPerModel > 1.1 {
				over = append(over, fmt.Sprintf("%s %.2f", r.Key(), r.AggPerModel))
			}
		}
	}
	fmt.Fprintf(&b, "- Aggregator egress per model over Kafka ≤ 1.1 S: %d of %d Kafka cells", kafkaCells-len(over), kafkaCells)
	if len(over) > 0 {
		fmt.Fprintf(&b, " (above: %s). What exceeds S is traffic the aggregator sends while it reads the N updates through the same link: TCP acknowledgements, fetch and offset requests, transaction markers; it grows with N, and for small models it is of the model's size", strings.Join(over, ", "))
	}
	b.WriteString(".\n")
	var eff []string
	cells := 0
	for _, r := range rws {
		if r.Runs > 0 && r.ModelBytes >= 1e6 {
			cells++
			if r.Efficiency >= 0.8 {
				eff = append(eff, fmt.Sprintf("%s/%d/%s/%s", r.Model, r.Clients, rateName(r.LinkBps), r.Channel))
			}
		}
	}
	fmt.Fprintf(&b, "- Achieved ÷ limit ≥ 0.8 (models of 1 MB and more): %d of %d cells", len(eff), cells)
	if len(eff) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(eff, ", "))
	}
	b.WriteString(".\n")
	return b.String()
}

// failures lists the failed runs of cells that also have successful ones
// (cells without any show their error in the table), with the error's
// first and last lines.
func failures(rws []*row) string {
	var b strings.Builder
	for _, r := range rws {
		for _, e := range r.Errors {
			if b.Len() == 0 {
				b.WriteString("Failed runs (not in the medians):\n\n")
			}
			lines := strings.Split(strings.TrimSpace(e), "\n")
			msg := lines[0]
			// The subprocess's own complaint (a line with err=) says more
			// than how its waiter gave up.
			for _, l := range lines[1:] {
				if strings.Contains(l, "err=") {
					msg += " … " + l
					break
				}
			}
			if len(lines) > 1 {
				msg += " … " + lines[len(lines)-1]
			}
			fmt.Fprintf(&b, "- %s: `%s`\n", r.Key(), strings.ReplaceAll(msg, "`", "'"))
		}
	}
	if b.Len() > 0 {
		b.WriteString("\n")
	}
	return b.String()
}

func shortErr(s string) string {
	s = strings.ReplaceAll(strings.SplitN(s, "\n", 2)[0], "|", "/")
	if len(s) > 90 {
		s = s[:90] + "…"
	}
	return s
}

// crossovers describes, per model, link and mode, from which N on Kafka
// reaches all devices before gRPC: measured, and from a line a + b·N
// fitted to each channel's times.
func crossovers(rws []*row) string {
	var b strings.Builder
	b.WriteString("Crossover: the number of clients from which Kafka reaches all devices before gRPC. The measured column rules; the fitted one is a straight line through few points (its intercepts can be negative), a hint where no measured N separates the channels.\n\n")
	b.WriteString("| model | link | clients | channel | measured | fitted (a + b·N per channel) |\n|---|---|---|---|---|---|\n")
	for _, c := range nbresult.Crossovers(rws) {
		measured := "no common N"
		switch {
		case len(c.KafkaFirst) == 0 && len(c.GRPCFirst) > 0:
			measured = fmt.Sprintf("gRPC first at every measured N (%v)", c.GRPCFirst)
		case len(c.GRPCFirst) == 0 && len(c.KafkaFirst) > 0:
			measured = fmt.Sprintf("Kafka first at every measured N (%v)", c.KafkaFirst)
		case len(c.KafkaFirst) > 0:
			measured = fmt.Sprintf("gRPC first at N = %v, Kafka first at N = %v", c.GRPCFirst, c.KafkaFirst)
		}
		fitted := "needs 2+ N on both"
		k, gr, ch := c.Kafka, c.GRPC, c.Channel
		if len(k.N) >= 2 && len(gr.N) >= 2 {
			ak, bk := fit(k.N, k.Ms)
			ag, bg := fit(gr.N, gr.Ms)
			switch {
			case bg > bk && ak > ag:
				fitted = fmt.Sprintf("N* ≈ %.0f (gRPC %.0f + %.1f·N ms, %s %.0f + %.1f·N ms)", (ak-ag)/(bg-bk), ag, bg, ch, ak, bk)
			case bg > bk:
				fitted = fmt.Sprintf("Kafka first at any N (gRPC %.0f + %.1f·N ms, %s %.0f + %.1f·N ms)", ag, bg, ch, ak, bk)
			default:
				fitted = fmt.Sprintf("no crossover: Kafka grows as fast (gRPC %.0f + %.1f·N ms, %s %.0f + %.1f·N ms)", ag, bg, ch, ak, bk)
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", c.Model, rateLabel(c.LinkBps), c.Mode, ch, measured, fitted)
	}
	return b.String()
}

// fit is the least-squares line y = a + b·x.
func fit(x, y []float64) (a, b float64) {
	var sx, sy, sxx, sxy float64
	n := float64(len(x))
	for i := range x {
		sx += x[i]
		sy += y[i]
		sxx += x[i] * x[i]
		sxy += x[i] * y[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return sy / n, 0
	}
	b = (n*sxy - sx*sy) / d
	return (sy - b*sx) / n, b
}

// channelStyle gives each channel one colour and marker in every plot.
func channelStyle(ch string) (color.Color, draw.GlyphDrawer) {
	switch ch {
	case chGRPC:
		return color.RGBA{R: 0x1b, G: 0x6f, B: 0xb5, A: 0xff}, draw.SquareGlyph{}
	case chKafka1:
		return color.RGBA{R: 0xe6, G: 0xab, B: 0x02, A: 0xff}, draw.TriangleGlyph{}
	}
	return color.RGBA{R: 0xd9, G: 0x5f, B: 0x02, A: 0xff}, draw.CircleGlyph{}
}

// writePlots writes, per model, link and mode, time to reach all devices
// against N (log-log), one line per channel.
func writePlots(dir string, rws []*row) ([]string, error) {
	var names []string
	type key struct {
		model string
		link  int64
		mode  string
	}
	pts := map[key]map[string]plotter.XYs{}
	var keys []key
	for _, r := range rws {
		if r.Runs == 0 || r.PropMs <= 0 {
			continue
		}
		k := key{r.Model, r.LinkBps, r.Mode}
		if pts[k] == nil {
			pts[k] = map[string]plotter.XYs{}
			keys = append(keys, k)
		}
		pts[k][r.Channel] = append(pts[k][r.Channel], plotter.XY{X: float64(r.Clients), Y: r.PropMs / 1000})
	}
	for _, k := range keys {
		p := plot.New()
		p.Title.Text = fmt.Sprintf("Time to reach all devices: %s, %s links, %s clients", k.model, rateLabel(k.link), k.mode)
		p.X.Label.Text = "clients N"
		p.Y.Label.Text = "seconds (mean over rounds 2..R)"
		// Log axes need a range: with a single N (or a single time) gonum
		// widens it by ±1, below zero, so such an axis stays linear.
		xs, ys := map[float64]bool{}, map[float64]bool{}
		for _, xy := range pts[k] {
			for _, pt := range xy {
				xs[pt.X], ys[pt.Y] = true, true
			}
		}
		if len(xs) > 1 {
			p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
		}
		if len(ys) > 1 {
			p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
		}
		p.Legend.Top, p.Legend.Left = true, true
		for _, ch := range []string{chGRPC, chKafka1, chKafka3} {
			xy := pts[k][ch]
			if len(xy) == 0 {
				continue
			}
			sort.Slice(xy, func(i, j int) bool { return xy[i].X < xy[j].X })
			l, s, err := plotter.NewLinePoints(xy)
			if err != nil {
				return nil, err
			}
			c, g := channelStyle(ch)
			l.Color, s.Color, s.Shape = c, c, g
			l.Width = vg.Points(1.5)
			p.Add(l, s)
			p.Legend.Add(ch, l, s)
		}
		name := fmt.Sprintf("reach_%s_%s_%s.png", strings.ReplaceAll(k.model, ":", ""), rateName(k.link), k.mode)
		if err := p.Save(16*vg.Centimeter, 10*vg.Centimeter, filepath.Join(dir, name)); err != nil {
			return nil, fmt.Errorf("plot %s: %w", name, err)
		}
		names = append(names, name)
	}
	return names, nil
}
