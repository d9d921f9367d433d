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
	"slices"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/fdxkafka/fdxkafka/internal/cli"
)

// File names in the results directory.
const (
	resultsJSON = "netbench.json"
	// readmePath is the README the tool writes, relative to the repository.
	readmePath = "evaluations/netbench/README.md"
)

// resultsFile is netbench.json: every run of every cell.
type resultsFile struct {
	Note    string    `json:"note"`
	Results []*Result `json:"results"`
}

const resultsNote = "netbench: Kafka vs gRPC on tc-shaped links between network namespaces; see evaluations/README.md#netbench"

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
			fresh[r.key()] = true
		}
		for _, r := range old {
			if !fresh[r.key()] {
				all = append(all, r)
			}
		}
	}
	all = append(all, rs...)
	b, err := json.MarshalIndent(resultsFile{Note: resultsNote, Results: all}, "", " ")
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
	var f resultsFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", resultsJSON, err)
	}
	return f.Results, nil
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
type row struct {
	cell
	command                              string
	runs, failed                         int
	modelBytes                           int64
	messages                             int64
	roundMs, propMs, propMaxMs, firstMs  float64
	aggEgress, aggPerModel, brokerEgress float64
	boundMs, efficiency, busy, ours      float64
	vsGRPC                               float64
	errors                               []string
}

func median(v []float64) float64 {
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

// rows groups results by cell, medians over successful runs, sorted by
// model size, link, mode, clients and channel.
func rows(rs []*Result) []*row {
	by := map[string][]*Result{}
	var keys []string
	for _, r := range rs {
		k := r.key()
		if _, ok := by[k]; !ok {
			keys = append(keys, k)
		}
		by[k] = append(by[k], r)
	}
	var out []*row
	for _, k := range keys {
		group := by[k]
		rw := &row{cell: group[0].cell, command: group[len(group)-1].Command}
		var msgs, round, prop, pmax, first, egr, per, brk, bound, eff, busy, ours []float64
		for _, r := range group {
			if r.Error != "" {
				rw.failed++
				rw.errors = append(rw.errors, r.Error)
				continue
			}
			rw.runs++
			rw.modelBytes = r.ModelBytes
			msgs = append(msgs, float64(r.Messages))
			round, prop, pmax = append(round, r.RoundMs), append(prop, r.PropagationMs), append(pmax, r.PropagationMaxMs)
			first = append(first, r.FirstPropagationMs)
			egr, per = append(egr, float64(r.AggEgressBytes)/float64(r.ModelsSent)), append(per, r.AggEgressPerModel)
			brk = append(brk, float64(r.BusiestBrokerOut)/float64(r.ModelsSent))
			bound, eff = append(bound, r.BoundMs), append(eff, r.Efficiency)
			busy, ours = append(busy, r.CPU.MachineBusy), append(ours, r.CPU.OursShare)
		}
		rw.messages = int64(median(msgs))
		rw.roundMs, rw.propMs, rw.propMaxMs, rw.firstMs = median(round), median(prop), median(pmax), median(first)
		rw.aggEgress, rw.aggPerModel, rw.brokerEgress = median(egr), median(per), median(brk)
		rw.boundMs, rw.efficiency, rw.busy, rw.ours = median(bound), median(eff), median(busy), median(ours)
		out = append(out, rw)
	}
	chOrder := map[string]int{chGRPC: 0, chKafka1: 1, chKafka3: 2}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		sa, _ := modelBytes(a.Model)
		sb, _ := modelBytes(b.Model)
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
		if r.Channel == chGRPC && r.runs > 0 {
			grpc[peerKey(r.cell)] = r.propMs
		}
	}
	for _, r := range out {
		r.vsGRPC = math.NaN()
		if g, ok := grpc[peerKey(r.cell)]; ok && r.runs > 0 && g > 0 {
			r.vsGRPC = r.propMs / g
		}
	}
	return out
}

// peerKey names a cell without its channel.
func peerKey(c cell) string {
	c.Channel = ""
	return c.key()
}

func mb(b float64) string { return fmt.Sprintf("%.2f", b/1e6) }

func sec(ms float64) string {
	if math.IsNaN(ms) {
		return "–"
	}
	if ms < 1000 {
		return fmt.Sprintf("%.0f ms", ms)
	}
	return fmt.Sprintf("%.2f s", ms/1000)
}

func sizeLabel(s int64) string {
	if s >= 1e6 {
		return fmt.Sprintf("%.0f MB", float64(s)/1e6)
	}
	return fmt.Sprintf("%.0f kB", float64(s)/1e3)
}

// render writes the README (tables grouped by the command that measured
// them, goals, crossover) and the plots, and prints the tables.
func render(dir, readme string, rs []*Result, stdout io.Writer) error {
	rws := rows(rs)
	var b strings.Builder
	// One table per command line, in the order the commands first appear.
	var cmds []string
	byCmd := map[string][]*row{}
	for _, r := range rws {
		if _, ok := byCmd[r.command]; !ok {
			cmds = append(cmds, r.command)
		}
		byCmd[r.command] = append(byCmd[r.command], r)
	}
	for _, cmd := range cmds {
		label := cmd
		if label == "" {
			label = "(command not recorded)"
		}
		fmt.Fprintf(&b, "```\nsudo %s\n```\n\n", label)
		b.WriteString(table(byCmd[cmd]))
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
		if r.runs == 0 {
			fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | – | – | – | – | – | – | – | – | – | – | 0 (%s) |\n",
				r.Model, r.Clients, rateLabel(r.LinkBps), r.Mode, r.Channel, shortErr(r.errors[0]))
			continue
		}
		vs, brk := "–", "–"
		if !math.IsNaN(r.vsGRPC) && r.Channel != chGRPC {
			vs = fmt.Sprintf("%.2f×", r.vsGRPC)
		}
		if r.Channel != chGRPC {
			brk = mb(r.brokerEgress) + " MB"
		}
		runs := fmt.Sprint(r.runs)
		if r.failed > 0 {
			runs += fmt.Sprintf(" (+%d failed, below)", r.failed)
		}
		fmt.Fprintf(&b, "| %s (%s) | %d | %s | %s | %s | %d | %s | %s / %s | %s | %s MB | %.2f | %s | %s | %.2f | %.0f%% (%.0f%%) | %s |\n",
			r.Model, sizeLabel(r.modelBytes), r.Clients, rateLabel(r.LinkBps), r.Mode, r.Channel, r.messages,
			sec(r.roundMs), sec(r.propMs), sec(r.propMaxMs), vs, mb(r.aggEgress), r.aggPerModel, brk,
			sec(r.boundMs), r.efficiency, 100*r.busy, 100*r.ours, runs)
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
	var g, k *row
	for _, r := range rws {
		if r.Model == "synthetic:10" && r.Clients == 100 && r.LinkBps == 1e9 && r.Mode == modeLong && r.runs > 0 {
			switch r.Channel {
			case chGRPC:
				g = r
			case chKafka3:
				k = r
			}
		}
	}
	if g != nil && k != nil {
		verdict := "not met"
		if k.propMs <= 0.5*g.propMs {
			verdict = "met"
		}
		fmt.Fprintf(&b, "- 10 MB model, 100 clients, 1 Gbit/s: kafka3 reaches all devices in %s, gRPC in %s: %.2f× (goal ≤ 0.5×): **%s**. Both are far from their bounds (%s and %s) with the machine's CPU %.0f%% and %.0f%% busy: the ratio is measured where CPU, not only the links, limits both channels.\n",
			sec(k.propMs), sec(g.propMs), k.propMs/g.propMs, verdict, sec(k.boundMs), sec(g.boundMs), 100*k.busy, 100*g.busy)
	} else {
		b.WriteString("- 10 MB model, 100 clients, 1 Gbit/s: not measured (no successful grpc and kafka3 runs of that cell).\n")
	}
	var over []string
	kafkaCells := 0
	for _, r := range rws {
		if r.runs > 0 && r.Channel != chGRPC {
			kafkaCells++
			if r.aggPerModel > 1.1 {
				over = append(over, fmt.Sprintf("%s %.2f", r.key(), r.aggPerModel))
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
		if r.runs > 0 && r.modelBytes >= 1e6 {
			cells++
			if r.efficiency >= 0.8 {
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
		if r.runs == 0 {
			continue
		}
		for _, e := range r.errors {
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
			fmt.Fprintf(&b, "- %s: `%s`\n", r.key(), strings.ReplaceAll(msg, "`", "'"))
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
	type series struct{ n, ms []float64 }
	groups := map[string]map[string]*series{}
	var order []string
	for _, r := range rws {
		if r.runs == 0 {
			continue
		}
		g := fmt.Sprintf("%s|%d|%s", r.Model, r.LinkBps, r.Mode)
		if groups[g] == nil {
			groups[g] = map[string]*series{}
			order = append(order, g)
		}
		s := groups[g][r.Channel]
		if s == nil {
			s = &series{}
			groups[g][r.Channel] = s
		}
		s.n, s.ms = append(s.n, float64(r.Clients)), append(s.ms, r.propMs)
	}
	var b strings.Builder
	b.WriteString("Crossover: the number of clients from which Kafka reaches all devices before gRPC. The measured column rules; the fitted one is a straight line through few points (its intercepts can be negative), a hint where no measured N separates the channels.\n\n")
	b.WriteString("| model | link | clients | channel | measured | fitted (a + b·N per channel) |\n|---|---|---|---|---|---|\n")
	for _, g := range order {
		parts := strings.Split(g, "|")
		var link int64
		fmt.Sscan(parts[1], &link)
		gr := groups[g][chGRPC]
		if gr == nil {
			continue
		}
		for _, ch := range []string{chKafka1, chKafka3} {
			k := groups[g][ch]
			if k == nil {
				continue
			}
			measured := "no common N"
			var kafkaFirst, grpcFirst []int
			for i, n := range k.n {
				for j, m := range gr.n {
					if m == n {
						if k.ms[i] < gr.ms[j] {
							kafkaFirst = append(kafkaFirst, int(n))
						} else {
							grpcFirst = append(grpcFirst, int(n))
						}
					}
				}
			}
			slices.Sort(kafkaFirst)
			slices.Sort(grpcFirst)
			switch {
			case len(kafkaFirst) == 0 && len(grpcFirst) > 0:
				measured = fmt.Sprintf("gRPC first at every measured N (%v)", grpcFirst)
			case len(grpcFirst) == 0 && len(kafkaFirst) > 0:
				measured = fmt.Sprintf("Kafka first at every measured N (%v)", kafkaFirst)
			case len(kafkaFirst) > 0:
				measured = fmt.Sprintf("gRPC first at N = %v, Kafka first at N = %v", grpcFirst, kafkaFirst)
			}
			fitted := "needs 2+ N on both"
			if len(k.n) >= 2 && len(gr.n) >= 2 {
				ak, bk := fit(k.n, k.ms)
				ag, bg := fit(gr.n, gr.ms)
				switch {
				case bg > bk && ak > ag:
					fitted = fmt.Sprintf("N* ≈ %.0f (gRPC %.0f + %.1f·N ms, %s %.0f + %.1f·N ms)", (ak-ag)/(bg-bk), ag, bg, ch, ak, bk)
				case bg > bk:
					fitted = fmt.Sprintf("Kafka first at any N (gRPC %.0f + %.1f·N ms, %s %.0f + %.1f·N ms)", ag, bg, ch, ak, bk)
				default:
					fitted = fmt.Sprintf("no crossover: Kafka grows as fast (gRPC %.0f + %.1f·N ms, %s %.0f + %.1f·N ms)", ag, bg, ch, ak, bk)
				}
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", parts[0], rateLabel(link), parts[2], ch, measured, fitted)
		}
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
		if r.runs == 0 || r.propMs <= 0 {
			continue
		}
		k := key{r.Model, r.LinkBps, r.Mode}
		if pts[k] == nil {
			pts[k] = map[string]plotter.XYs{}
			keys = append(keys, k)
		}
		pts[k][r.Channel] = append(pts[k][r.Channel], plotter.XY{X: float64(r.Clients), Y: r.propMs / 1000})
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
