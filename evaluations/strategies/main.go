// Command strategies measures what the aggregation strategies buy, on MNIST
// logistic regression with in-process clients, and writes the tables (and
// the DP plot) to -out:
//
//   - byzantine: 50 clients, 10 of which send their update sign-flipped and
//     scaled by 10 (w_global − 10·Δ); FedAvg against FedMedian,
//     FedTrimmedAvg, Krum, Multi-Krum and Bulyan, next to a clean FedAvg run.
//   - noniid: 2 label shards per client (the FedAvg paper's pathological
//     split); FedAvg against FedProx and FedAdam.
//   - dp: DP-FedAvg with fixed clipping at three noise multipliers; test
//     accuracy against the (ε, δ) spent, round by round.
//
// These are figures, not pass/fail tests. The model does not depend on the
// channel (the same updates give the bit-identical model over Kafka and
// gRPC, asserted by aggregator/job's tests), so the runs use gRPC on
// loopback by default, the cheapest on a small machine; -channel embedded
// runs them over an in-process Kafka broker.
//
//	go run ./evaluations/strategies -experiment all -out evaluations/results/strategies
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/internal/cli"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

func main() { cli.Main("strategies", run) }

type options struct {
	experiment string
	out        string
	channel    string
	clients    int
	byzantine  int
	factor     float64
	seed       uint64
	byzRounds  int
	nonIIDRnds int
	epochs     int
	dpRounds   int
	dpClip     float64
	dpNoise    string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("strategies", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.experiment, "experiment", "all", "byzantine, noniid, dp or all")
	fs.StringVar(&o.out, "out", "evaluations/results/strategies", "directory for the tables (markdown, JSON) and plots")
	fs.StringVar(&o.channel, "channel", "grpc", "grpc (loopback) or embedded (in-process Kafka broker)")
	fs.IntVar(&o.clients, "clients", 50, "clients, all taking part in every round")
	fs.IntVar(&o.byzantine, "byzantine", 10, "byzantine: clients that send sign-flipped updates")
	fs.Float64Var(&o.factor, "factor", 10, "byzantine: the attackers send w_global − factor·Δ")
	fs.Uint64Var(&o.seed, "seed", 1, "job seed")
	fs.IntVar(&o.byzRounds, "byzantine-rounds", 5, "byzantine: rounds")
	fs.IntVar(&o.nonIIDRnds, "noniid-rounds", 20, "noniid: rounds")
	fs.IntVar(&o.epochs, "noniid-epochs", 5, "noniid: local epochs (client drift grows with them)")
	fs.IntVar(&o.dpRounds, "dp-rounds", 10, "dp: rounds")
	fs.Float64Var(&o.dpClip, "dp-clip-norm", 1, "dp: clip norm S")
	fs.StringVar(&o.dpNoise, "dp-noise", "0.5,1,2", "dp: noise multipliers, comma-separated")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if o.channel != "grpc" && o.channel != "embedded" {
		return cli.Usagef("--channel %q: want grpc or embedded", o.channel)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	e := &env{o: o, data: dataset.NewCatalog(), stdout: stdout}
	var exps []func(context.Context) error
	switch o.experiment {
	case "byzantine":
		exps = append(exps, e.byzantineTable)
	case "noniid":
		exps = append(exps, e.nonIID)
	case "dp":
		exps = append(exps, e.dp)
	case "all":
		exps = append(exps, e.byzantineTable, e.nonIID, e.dp)
	default:
		return cli.Usagef("--experiment %q: want byzantine, noniid, dp or all", o.experiment)
	}
	for _, x := range exps {
		if err := x(ctx); err != nil {
			return err
		}
	}
	return nil
}

type env struct {
	o      options
	data   *dataset.Catalog
	stdout io.Writer
	n      int // jobs run, for unique job ids
}

// runJob runs spec with the evaluation's clients, the first attackers of
// which flip their updates.
func (e *env) runJob(ctx context.Context, spec job.Spec, attackers int) (*job.Result, error) {
	e.n++
	spec.Job = fmt.Sprintf("strategies-%d-%d", os.Getpid(), e.n)
	if spec.Rounds.MinClients == 0 {
		spec.Rounds.MinClients = e.o.clients
	}
	spec.Data.Partition.NumPartitions = e.o.clients
	spec.Seed = e.o.seed
	r, err := spec.Resolve(e.data)
	if err != nil {
		return nil, err
	}
	cc := job.ChannelConfig{Transport: job.GRPC, Listen: "127.0.0.1:0"}
	chName := participant.ChannelGRPC
	if e.o.channel == "embedded" {
		cc = job.ChannelConfig{Transport: job.EmbeddedKafka, Listen: "127.0.0.1:0"}
		chName = participant.ChannelKafka
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, e.o.clients)
	p := &participant.Participant{Data: e.data}
	ready := func(addr string) {
		for i := range e.o.clients {
			wg.Go(func() {
				id := strconv.Itoa(i)
				ch, err := participant.Transport{}.Dial(ctx, participant.Target{Channel: chName, Broker: addr, Job: spec.Job, ClientID: id})
				if err != nil {
					errs <- err
					return
				}
				defer ch.Close()
				if i < attackers {
					ch = &flipper{Client: ch, factor: e.o.factor}
				}
				// As participant.Follow: a refused update (stale, or caught
				// by a norm bound) does not end the client.
				var next int64
				for {
					sum, err := p.Run(ctx, ch, participant.Options{Job: spec.Job, ClientID: id, Round: next})
					switch {
					case err == nil && sum.Final:
						return
					case err == nil || errors.Is(err, channel.ErrRejected):
						next = sum.LastRound + 1
					default:
						if ctx.Err() == nil {
							errs <- fmt.Errorf("client %s: %w", id, err)
						}
						return
					}
				}
			})
		}
	}
	start := time.Now()
	res, err := job.RunOn(ctx, r, cc, job.Env{Log: slog.New(slog.DiscardHandler)}, ready)
	cancel()
	wg.Wait()
	close(errs)
	if err != nil {
		return nil, err
	}
	for err := range errs {
		// With fewer updates than clients closing a round, the late ones
		// find the aggregator gone; the job's own result is what counts.
		if !errors.Is(err, channel.ErrUnreachable) {
			fmt.Fprintf(os.Stderr, "strategies: %v\n", err)
		}
	}
	fmt.Fprintf(os.Stderr, "strategies: %s done in %s, final accuracy %.4f\n", spec.Strategy.Name, time.Since(start).Round(time.Millisecond), res.Rounds[len(res.Rounds)-1].Accuracy)
	return res, nil
}

// flipper is a Byzantine client: it trains honestly, then sends
// w_global − factor·(w_local − w_global).
type flipper struct {
	channel.Client
	factor float64
	global *fdxv1.GlobalModel
}

func (f *flipper) Model(ctx context.Context, minRound int64) (*fdxv1.GlobalModel, error) {
	m, err := f.Client.Model(ctx, minRound)
	f.global = m
	return m, err
}

func (f *flipper) Submit(ctx context.Context, u *fdxv1.Update) error {
	out := make([]*fdxv1.Tensor, len(u.GetParams()))
	for i, t := range u.GetParams() {
		local, err := tensor.Float32s(nil, t)
		if err != nil {
			return err
		}
		g, err := tensor.Float32s(nil, f.global.GetParams()[i])
		if err != nil {
			return err
		}
		for j := range local {
			local[j] = g[j] - float32(f.factor)*(local[j]-g[j])
		}
		out[i] = tensor.FromFloat32(t.GetName(), t.GetShape(), local)
	}
	u.Params = out
	return f.Client.Submit(ctx, u)
}

// row is one run in a table.
type row struct {
	Name     string           `json:"name"`
	Accuracy []float64        `json:"accuracy"` // per round
	Final    float64          `json:"final_accuracy"`
	Rejected map[string]int64 `json:"rejected,omitempty"`
	Epsilon  []float64        `json:"epsilon,omitempty"`
}

func rowOf(name string, res *job.Result) row {
	r := row{Name: name, Rejected: res.Rejected}
	for _, rr := range res.Rounds {
		r.Accuracy = append(r.Accuracy, rr.Accuracy)
		if eps, ok := rr.Strategy["dp_epsilon"]; ok {
			r.Epsilon = append(r.Epsilon, eps)
		}
	}
	r.Final = r.Accuracy[len(r.Accuracy)-1]
	return r
}

func (e *env) write(name, command string, table string, rows []row) error {
	md := fmt.Sprintf("%s\n\nProduced by:\n\n    %s\n", table, command)
	if err := os.WriteFile(filepath.Join(e.o.out, name+".md"), []byte(md), 0o644); err != nil {
		return err
	}
	b, err := json.MarshalIndent(map[string]any{"command": command, "options": e.opts(), "runs": rows}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(e.o.out, name+".json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, md)
	return nil
}

func (e *env) opts() map[string]any {
	return map[string]any{"clients": e.o.clients, "byzantine": e.o.byzantine, "factor": e.o.factor, "seed": e.o.seed,
		"channel": e.o.channel, "model": "logreg", "dataset": "mnist"}
}

func (e *env) byzantineTable(ctx context.Context) error {
	f := e.o.byzantine
	// The strategies' own defence only.
	base := job.Spec{Rounds: job.RoundsSpec{NumRounds: e.o.byzRounds}, Security: job.SecuritySpec{NormFactor: -1}}
	clean, err := e.runJob(ctx, withStrategy(base, strategy.Config{Name: "fedavg"}), 0)
	if err != nil {
		return err
	}
	rows := []row{rowOf("fedavg, no attackers", clean)}
	for _, cfg := range []strategy.Config{
		{Name: "fedavg"}, {Name: "fedmedian"}, {Name: "fedtrimmedavg", TrimFraction: 0.2},
		{Name: "krum", ByzantineF: f}, {Name: "multikrum", ByzantineF: f}, {Name: "bulyan", ByzantineF: f},
	} {
		res, err := e.runJob(ctx, withStrategy(base, cfg), f)
		if err != nil {
			return err
		}
		rows = append(rows, rowOf(cfg.Name, res))
	}
	// The aggregator's default norm bound (10× the previous round's median
	// update norm) in front of plain FedAvg, for comparison.
	nb := withStrategy(base, strategy.Config{Name: "fedavg"})
	nb.Security.NormFactor = 0
	// Rejected attackers stop; the rounds close on the honest clients.
	nb.Rounds.MinClients = e.o.clients - f
	res, err := e.runJob(ctx, nb, f)
	if err != nil {
		return err
	}
	rows = append(rows, rowOf("fedavg + default norm bound", res))

	var b strings.Builder
	fmt.Fprintf(&b, "### Byzantine clients: %d of %d send w − %g·Δ (MNIST logreg, %d rounds, IID)\n\n", f, e.o.clients, e.o.factor, e.o.byzRounds)
	fmt.Fprintf(&b, "| strategy | parameters | accuracy per round | final | vs clean | rejected |\n|---|---|---|---|---|---|\n")
	params := map[string]string{"fedtrimmedavg": "β = 0.2", "krum": fmt.Sprintf("f = %d", f), "multikrum": fmt.Sprintf("f = %d, m = n − f", f),
		"bulyan": fmt.Sprintf("f = %d", f), "fedavg + default norm bound": "norm factor 10"}
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %.4f | %+.2f pt | %s |\n", r.Name, or(params[r.Name], "—"), accs(r.Accuracy), r.Final,
			100*(r.Final-rows[0].Final), rejected(r.Rejected))
	}
	return e.write("byzantine", "go run ./evaluations/strategies -experiment byzantine", b.String(), rows)
}

func (e *env) nonIID(ctx context.Context) error {
	base := job.Spec{Rounds: job.RoundsSpec{NumRounds: e.o.nonIIDRnds}, Training: job.TrainingSpec{LocalEpochs: e.o.epochs},
		Data: job.DataSpec{Partition: dataset.PartitionSpec{Scheme: dataset.SchemeShards, ShardsPerClient: 2}}}
	var rows []row
	for _, c := range []struct {
		name string
		cfg  strategy.Config
		mu   float64
	}{
		{"fedavg", strategy.Config{Name: "fedavg"}, 0},
		{"fedprox μ=0.1", strategy.Config{Name: "fedprox", ProximalMu: 0.1}, 0},
		{"fedprox μ=1", strategy.Config{Name: "fedprox", ProximalMu: 1}, 0},
		{"fedadam", strategy.Config{Name: "fedadam"}, 0},
		{"fedadam η=0.01", strategy.Config{Name: "fedadam", ServerLR: 0.01}, 0},
	} {
		res, err := e.runJob(ctx, withStrategy(base, c.cfg), 0)
		if err != nil {
			return err
		}
		rows = append(rows, rowOf(c.name, res))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "### Non-IID: 2 label shards per client (%d clients, MNIST logreg, %d local epochs, %d rounds)\n\n", e.o.clients, e.o.epochs, e.o.nonIIDRnds)
	fmt.Fprintf(&b, "| strategy | accuracy at round 1, 5, 10, ... | final | best |\n|---|---|---|---|\n")
	for _, r := range rows {
		best := 0.0
		var pts []float64
		for i, a := range r.Accuracy {
			best = max(best, a)
			if i == 0 || (i+1)%5 == 0 {
				pts = append(pts, a)
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %.4f | %.4f |\n", r.Name, accs(pts), r.Final, best)
	}
	return e.write("noniid", "go run ./evaluations/strategies -experiment noniid", b.String(), rows)
}

func (e *env) dp(ctx context.Context) error {
	base := job.Spec{Rounds: job.RoundsSpec{NumRounds: e.o.dpRounds}}
	clean, err := e.runJob(ctx, withStrategy(base, strategy.Config{Name: "fedavg"}), 0)
	if err != nil {
		return err
	}
	rows := []row{rowOf("fedavg (no DP)", clean)}
	for _, z := range strings.Split(e.o.dpNoise, ",") {
		zv, err := strconv.ParseFloat(strings.TrimSpace(z), 64)
		if err != nil {
			return cli.Usagef("--dp-noise %q: %v", z, err)
		}
		res, err := e.runJob(ctx, withStrategy(base, strategy.Config{Name: "dpfedavg-fixed", NoiseMultiplier: zv, ClipNorm: e.o.dpClip, Seed: e.o.seed}), 0)
		if err != nil {
			return err
		}
		rows = append(rows, rowOf(fmt.Sprintf("dpfedavg-fixed z=%g", zv), res))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "### DP-FedAvg, fixed clipping S = %g, every client every round (q = 1), δ = 1e-5 (%d clients, MNIST logreg)\n\n", e.o.dpClip, e.o.clients)
	fmt.Fprintf(&b, "| run | round | ε | accuracy |\n|---|---|---|---|\n")
	for _, r := range rows {
		for i, a := range r.Accuracy {
			eps := "∞"
			if i < len(r.Epsilon) {
				eps = fmt.Sprintf("%.2f", r.Epsilon[i])
			}
			if r.Epsilon == nil && i != len(r.Accuracy)-1 {
				continue // the reference: its final accuracy only
			}
			fmt.Fprintf(&b, "| %s | %d | %s | %.4f |\n", r.Name, i+1, eps, a)
		}
	}
	if err := e.plotDP(rows); err != nil {
		return err
	}
	return e.write("dp", "go run ./evaluations/strategies -experiment dp", b.String()+"\n![accuracy vs epsilon](dp.png)\n", rows)
}

func (e *env) plotDP(rows []row) error {
	p := plot.New()
	p.Title.Text = "DP-FedAvg: test accuracy vs ε (δ = 1e-5)"
	p.X.Label.Text = "ε spent"
	p.Y.Label.Text = "test accuracy"
	p.Legend.Top = false
	p.Legend.Left = false
	colors := []color.Color{color.RGBA{0xd9, 0x5f, 0x02, 0xff}, color.RGBA{0x1b, 0x6f, 0xb5, 0xff}, color.RGBA{0x75, 0x70, 0xb3, 0xff}, color.RGBA{0x1b, 0x9e, 0x77, 0xff}}
	ref := rows[0].Final
	maxEps := 0.0
	for i, r := range rows[1:] {
		xy := plotter.XYs{}
		for j, eps := range r.Epsilon {
			xy = append(xy, plotter.XY{X: eps, Y: r.Accuracy[j]})
			maxEps = max(maxEps, eps)
		}
		l, pts, err := plotter.NewLinePoints(xy)
		if err != nil {
			return err
		}
		l.Color, pts.Color = colors[i%len(colors)], colors[i%len(colors)]
		p.Add(l, pts)
		p.Legend.Add(r.Name, l, pts)
	}
	line, err := plotter.NewLine(plotter.XYs{{X: 0, Y: ref}, {X: maxEps, Y: ref}})
	if err != nil {
		return err
	}
	line.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(line)
	p.Legend.Add("no DP (final)", line)
	return p.Save(16*vg.Centimeter, 10*vg.Centimeter, filepath.Join(e.o.out, "dp.png"))
}

func withStrategy(s job.Spec, cfg strategy.Config) job.Spec {
	s.Strategy = cfg
	return s
}

func accs(a []float64) string {
	parts := make([]string, len(a))
	for i, v := range a {
		parts[i] = fmt.Sprintf("%.4f", v)
	}
	return strings.Join(parts, ", ")
}

func rejected(m map[string]int64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return or(strings.Join(parts, ", "), "none")
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
