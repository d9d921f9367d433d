package harness

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Plot file names. The sweep's names differ from the single run's so both
// sets can live in one directory.
const (
	PlotRoundTime        = "round_time.png"
	PlotPropagation      = "propagation.png"
	PlotAccuracy         = "accuracy.png"
	PlotSweepMessages    = "sweep_messages.png"
	PlotSweepEgress      = "sweep_egress.png"
	PlotSweepPropagation = "sweep_propagation.png"
)

const plotW, plotH = 16 * vg.Centimeter, 10 * vg.Centimeter

// channelStyle gives each channel the same colour and marker in every plot.
func channelStyle(ch string) (color.Color, draw.GlyphDrawer) {
	switch ch {
	case Kafka:
		return color.RGBA{R: 0xd9, G: 0x5f, B: 0x02, A: 0xff}, draw.CircleGlyph{}
	case GRPC:
		return color.RGBA{R: 0x1b, G: 0x6f, B: 0xb5, A: 0xff}, draw.SquareGlyph{}
	case GRPCDurable:
		return color.RGBA{R: 0x75, G: 0x70, B: 0xb3, A: 0xff}, draw.TriangleGlyph{}
	}
	return color.Black, draw.CrossGlyph{}
}

// series is one line: a channel's figure, or (dashed) the same figure over
// its long-running local clients only.
type series struct {
	channel string
	local   bool
	xy      plotter.XYs
}

// WritePlots writes the per-round plots of rep into dir: time per round,
// model propagation time and test accuracy per round, one line per channel.
func WritePlots(dir string, rep *Report) ([]string, error) {
	var roundTime, prop, acc []series
	maxRound := 0
	for _, c := range rep.Channels {
		rt, pr, lp := plotter.XYs{}, plotter.XYs{}, plotter.XYs{}
		ac := plotter.XYs{{X: 0, Y: c.InitialAccuracy}}
		for _, r := range c.Rounds {
			x := float64(r.Round)
			rt = append(rt, plotter.XY{X: x, Y: r.DurationMs / 1000})
			pr = append(pr, plotter.XY{X: x, Y: r.PropagationMs})
			lp = append(lp, plotter.XY{X: x, Y: r.LocalPropagationMs})
			ac = append(ac, plotter.XY{X: x, Y: r.Accuracy})
			maxRound = max(maxRound, int(r.Round))
		}
		roundTime = append(roundTime, series{channel: c.Channel, xy: rt})
		prop = append(prop, series{channel: c.Channel, xy: pr})
		if rep.Setup.LocalClients > 0 && rep.Setup.HTTPClients > 0 {
			prop = append(prop, series{channel: c.Channel, local: true, xy: lp})
		}
		acc = append(acc, series{channel: c.Channel, xy: ac})
	}
	sub := subtitle(rep.Setup)
	plots := []struct {
		file, title, y string
		from           int
		s              []series
	}{
		{PlotRoundTime, "Time per round", "seconds (publish → next publish)", 1, roundTime},
		{PlotPropagation, "Model propagation time (dashed: long-running clients only)", "ms until every client held the round's model", 1, prop},
		{PlotAccuracy, "Test accuracy per round", "accuracy (round 0 = initial model)", 0, acc},
	}
	var out []string
	for _, pl := range plots {
		p := plot.New()
		p.Title.Text = pl.title + "\n" + sub
		p.X.Label.Text = "round"
		p.Y.Label.Text = pl.y
		p.X.Tick.Marker = intTicks(pl.from, maxRound)
		p.Y.Min = 0
		if err := addSeries(p, pl.s); err != nil {
			return out, fmt.Errorf("plot %s: %w", pl.file, err)
		}
		if pl.file == PlotAccuracy {
			// Accuracy climbs to the top right, where the legend would be.
			p.Legend.Top = false
		}
		path, err := save(p, dir, pl.file)
		if err != nil {
			return out, err
		}
		out = append(out, path)
	}
	return out, nil
}

// WriteSweepPlots writes how messages, aggregator egress and propagation
// time grow with the number of clients, one line per channel, on log-log
// axes so that linear growth is a slope-1 line.
func WriteSweepPlots(dir string, sw *SweepReport) ([]string, error) {
	byChannel := map[string]*[4]plotter.XYs{}
	var order []string
	for _, r := range sw.Runs {
		for _, c := range r.Channels {
			s := byChannel[c.Channel]
			if s == nil {
				s = &[4]plotter.XYs{}
				byChannel[c.Channel] = s
				order = append(order, c.Channel)
			}
			x := float64(r.Setup.Clients)
			s[0] = append(s[0], plotter.XY{X: x, Y: float64(max(c.Messages, 1))})
			s[1] = append(s[1], plotter.XY{X: x, Y: max(float64(c.Aggregator.BytesSent)/1e6, 1e-3)})
			s[2] = append(s[2], plotter.XY{X: x, Y: max(c.PropagationMeanMs, 0.1)})
			if r.Setup.LocalClients > 0 && r.Setup.HTTPClients > 0 {
				s[3] = append(s[3], plotter.XY{X: x, Y: max(c.LocalPropagationMeanMs, 0.1)})
			}
		}
	}
	sub := ""
	if len(sw.Runs) > 0 {
		sub = subtitle(sw.Runs[0].Setup)
	}
	plots := []struct{ file, title, y string }{
		{PlotSweepMessages, "Messages transmitted vs clients", "messages (log)"},
		{PlotSweepEgress, "Aggregator egress vs clients", "MB sent by the aggregator (log)"},
		{PlotSweepPropagation, "Model propagation time vs clients (dashed: long-running clients only)", "ms until every client held the model (log)"},
	}
	var out []string
	for i, pl := range plots {
		var ss []series
		for _, ch := range order {
			ss = append(ss, series{channel: ch, xy: byChannel[ch][i]})
			if i == 2 {
				ss = append(ss, series{channel: ch, local: true, xy: byChannel[ch][3]})
			}
		}
		p := plot.New()
		p.Title.Text = pl.title + "\n" + sub
		p.X.Label.Text = "clients (log)"
		p.Y.Label.Text = pl.y
		p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
		p.X.Tick.Marker = sizeTicks(sw.Sizes)
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		if err := addSeries(p, ss); err != nil {
			return out, fmt.Errorf("plot %s: %w", pl.file, err)
		}
		// Growth curves rise to the right; the top left stays clear.
		p.Legend.Left = true
		path, err := save(p, dir, pl.file)
		if err != nil {
			return out, err
		}
		out = append(out, path)
	}
	return out, nil
}

func subtitle(s Setup) string {
	return fmt.Sprintf("%s on %s, %d rounds, broker %s", s.Model, s.Dataset, s.Rounds, s.Broker)
}

func addSeries(p *plot.Plot, ss []series) error {
	for _, s := range ss {
		if len(s.xy) == 0 {
			continue
		}
		l, pts, err := plotter.NewLinePoints(s.xy)
		if err != nil {
			return fmt.Errorf("%s: %w", s.channel, err)
		}
		c, g := channelStyle(s.channel)
		l.Color, pts.Color, pts.Shape = c, c, g
		l.Width = vg.Points(1.5)
		label := s.channel
		if s.local {
			l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
			label += ", local clients"
		}
		p.Add(l, pts)
		p.Legend.Add(label, l, pts)
	}
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	return nil
}

func intTicks(from, to int) plot.ConstantTicks {
	var t plot.ConstantTicks
	for i := from; i <= to; i++ {
		t = append(t, plot.Tick{Value: float64(i), Label: strconv.Itoa(i)})
	}
	return t
}

func sizeTicks(sizes []int) plot.ConstantTicks {
	var t plot.ConstantTicks
	for _, n := range sizes {
		t = append(t, plot.Tick{Value: float64(n), Label: strconv.Itoa(n)})
	}
	return t
}

func save(p *plot.Plot, dir, file string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("plots: %w", err)
	}
	path := filepath.Join(dir, file)
	if err := p.Save(plotW, plotH, path); err != nil {
		return "", fmt.Errorf("plot %s: %w", path, err)
	}
	return path, nil
}
