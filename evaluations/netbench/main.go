// Command netbench measures Kafka against gRPC on a network shaped like the
// deployment, not on loopback: the aggregator, each Kafka broker and a few
// client hosts are Linux network namespaces joined by one bridge, every
// host's link rate-limited with tc (tbf). Over gRPC every copy of the
// model leaves the aggregator's link; over Kafka the aggregator sends it
// once and the brokers share the fan-out.
//
//	netbench run [flags]     run a matrix of cells, write JSON, markdown and plots
//	netbench report [flags]  rewrite the markdown and plots from the JSON
//	netbench cleanup         remove every testbed left behind (namespaces fdxnb-*)
//
// It needs root (namespaces, veth, tc) and says so otherwise. The testbed is
// isolated: addresses from 198.18.0.0/15, a bridge in a namespace of its
// own attached to no host interface, no default route, forwarding off; it
// checks that before it starts anything and refuses to run otherwise, and
// removes everything it made when it ends, also on Ctrl-C.
//
// Internal subcommands, started by run inside the namespaces: clients
// (long-running clients), trigger (per-round function invocations) and
// kfake (the embedded broker as a process).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fdxkafka/fdxkafka/evaluations/netbench/nbresult"
	"github.com/fdxkafka/fdxkafka/evaluations/netbench/testbed"
	"github.com/fdxkafka/fdxkafka/internal/cli"
)

func main() { cli.Main("netbench", dispatch) }

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		cfg, err := parseRun(args, stderr)
		if err != nil {
			return err
		}
		_, err = Run(ctx, cfg)
		return err
	case "report":
		return runReport(args, stdout, stderr)
	case "cleanup":
		return runCleanup(ctx, args, stdout, stderr)
	case "clients":
		return runClients(ctx, args, stderr)
	case "trigger":
		return runTrigger(ctx, args, stderr)
	case "kfake":
		return runKfake(ctx, args)
	}
	return cli.Usagef("unknown command %q: want run, report or cleanup", cmd)
}

// Config is one run of the matrix.
type Config struct {
	Models   []string
	Clients  []int
	Links    []int64
	Channels []string
	Modes    []string
	Rounds   int
	Repeats  int
	// ClientHosts spreads the clients over this many namespaces; 0 puts
	// them in the aggregator's.
	ClientHosts int
	BrokerKind  string
	// MaxClientMB skips cells whose clients would hold more model copies
	// in memory than this (the machine has 24 GB for everyone).
	MaxClientMB int
	MaxInFlight int
	CellTimeout time.Duration
	// Out is the results directory; Merge keeps its earlier cells.
	Out   string
	Merge bool
	// Tag names the testbed ([a-z0-9]).
	Tag string
	// Command is the command line that regenerates this run's cells,
	// recorded with each result.
	Command string
	// Readme is the README the run rewrites from the results, relative to
	// the repository (empty: none).
	Readme string
	Log    *slog.Logger
}

const synopsis = `usage: netbench [run] [flags] | netbench report [flags] | netbench cleanup

Kafka against gRPC on shaped links between network namespaces (needs root).

  netbench run -models synthetic:10 -clients 100 -links 1g -channels grpc,kafka3 -repeats 3
  netbench report -out evaluations/results/netbench
  netbench cleanup`

func parseRun(args []string, stderr io.Writer) (Config, error) {
	fs := flag.NewFlagSet("netbench run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cli.SetUsage(fs, synopsis, nil)
	models := fs.String("models", "logreg,2nn,synthetic:10,synthetic:100", "models: logreg, 2nn, synthetic:<MB>")
	clients := fs.String("clients", "10,100,1000", "client counts")
	links := fs.String("links", "1g", "link rates of every host (e.g. 100m,1g,10g)")
	channels := fs.String("channels", "grpc,kafka1,kafka3", "grpc, kafka1 (1 broker), kafka3 (3 brokers, --model-partitions 3)")
	modes := fs.String("modes", "long", "long (long-running clients), round (the HTTP function invoked per client and round)")
	rounds := fs.Int("rounds", 3, "rounds per job (figures are means over rounds 2..R)")
	repeats := fs.Int("repeats", 1, "runs of each cell (tables show the median)")
	clientHosts := fs.Int("client-hosts", 4, "client namespaces the clients are spread over (0: the aggregator's)")
	brokerKind := fs.String("broker", brokerKafka, "kafka (Apache Kafka via deploy/kafka/kafka.sh) or kfake (the embedded broker, 1 node)")
	maxMB := fs.Int("max-client-mb", 12000, "skip cells whose clients would hold more than this many MB of models")
	inflight := fs.Int("max-inflight", 64, "per-round invocations in flight per client host")
	timeout := fs.Duration("cell-timeout", 20*time.Minute, "limit on one cell")
	out := fs.String("out", "evaluations/results/netbench", "results directory")
	merge := fs.Bool("merge", true, "keep the cells already in -out/netbench.json (a cell run again replaces its earlier runs)")
	tag := fs.String("tag", "run", "testbed tag ([a-z0-9])")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := cli.Parse(fs, args); err != nil {
		return Config{}, err
	}
	lvl, err := cli.LogLevel("log-level", *level)
	if err != nil {
		return Config{}, err
	}
	cfg := Config{Models: split(*models), Channels: split(*channels), Modes: split(*modes), Rounds: *rounds,
		Repeats: *repeats, ClientHosts: *clientHosts, BrokerKind: *brokerKind, MaxClientMB: *maxMB,
		MaxInFlight: *inflight, CellTimeout: *timeout, Out: *out, Merge: *merge, Tag: *tag,
		Command: "go run ./evaluations/netbench run " + strings.Join(args, " "), Readme: readmePath,
		Log: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))}
	for _, s := range split(*clients) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return Config{}, cli.Usagef("-clients %q: want positive counts", s)
		}
		cfg.Clients = append(cfg.Clients, n)
	}
	for _, s := range split(*links) {
		r, err := parseRate(s)
		if err != nil {
			return Config{}, cli.Usagef("-links: %v", err)
		}
		cfg.Links = append(cfg.Links, r)
	}
	if err := cfg.validate(); err != nil {
		return Config{}, cli.Usagef("%v", err)
	}
	return cfg, nil
}

func (c Config) validate() error {
	for _, m := range c.Models {
		if _, err := modelBytes(m); err != nil {
			return err
		}
	}
	for _, ch := range c.Channels {
		if !slices.Contains([]string{chGRPC, chKafka1, chKafka3}, ch) {
			return fmt.Errorf("channel %q: want grpc, kafka1 or kafka3", ch)
		}
		if ch == chKafka3 && c.BrokerKind == brokerKfake {
			return errors.New("kafka3 needs -broker kafka (the embedded broker runs alone)")
		}
	}
	for _, m := range c.Modes {
		if m != modeLong && m != modeRound {
			return fmt.Errorf("mode %q: want long or round", m)
		}
	}
	switch {
	case len(c.Models) == 0 || len(c.Clients) == 0 || len(c.Links) == 0 || len(c.Channels) == 0 || len(c.Modes) == 0:
		return errors.New("empty matrix")
	case c.Rounds < 1 || c.Repeats < 1 || c.ClientHosts < 0 || c.ClientHosts > 64:
		return errors.New("want -rounds ≥ 1, -repeats ≥ 1, 0 ≤ -client-hosts ≤ 64")
	case c.BrokerKind != brokerKafka && c.BrokerKind != brokerKfake:
		return fmt.Errorf("-broker %q: want kafka or kfake", c.BrokerKind)
	}
	return nil
}

func split(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseRate reads 100m, 1g, 10g, 500k or plain bits/s.
func parseRate(s string) (int64, error) {
	mult := int64(1)
	num := strings.ToLower(strings.TrimSuffix(strings.ToLower(s), "bit"))
	switch {
	case strings.HasSuffix(num, "g"):
		mult, num = 1e9, strings.TrimSuffix(num, "g")
	case strings.HasSuffix(num, "m"):
		mult, num = 1e6, strings.TrimSuffix(num, "m")
	case strings.HasSuffix(num, "k"):
		mult, num = 1e3, strings.TrimSuffix(num, "k")
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("rate %q: want e.g. 100m, 1g, 10g", s)
	}
	return int64(v * float64(mult)), nil
}

// rateName prints a rate as 100m, 1g, 10g; rateLabel for people: 1 Gbit/s.
var rateName, rateLabel = nbresult.RateName, nbresult.RateLabel

// clientLinkCap bounds a client host's shaped rate: it stands for many
// devices, each with a link of the cell's rate, so it gets their sum, up
// to a rate no CPU here reaches.
const clientLinkCap = 40e9

// Run runs the matrix and writes the results. It returns the new results.
func Run(ctx context.Context, cfg Config) ([]*Result, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := testbed.Preflight(); err != nil {
		return nil, err
	}
	if removed, err := testbed.CleanupStale(ctx, log); err != nil {
		return nil, fmt.Errorf("removing stale testbeds: %w", err)
	} else if len(removed) > 0 {
		log.Warn("removed testbeds of runs that no longer exist", "removed", removed)
	}
	root, err := repoRoot(ctx)
	if err != nil {
		return nil, err
	}
	out := cfg.Out
	if !filepath.IsAbs(out) {
		out = filepath.Join(root, out)
	}
	readme := cfg.Readme
	if readme != "" && !filepath.IsAbs(readme) {
		readme = filepath.Join(root, readme)
	}
	dir := filepath.Join(os.TempDir(), strings.TrimSuffix(testbed.Prefix(cfg.Tag), "-"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bins, err := build(ctx, dir, log)
	if err != nil {
		return nil, err
	}

	// The plan: cells grouped by broker count, so that brokers start once
	// per group; skipped cells are recorded with the reason.
	var plan []cell
	var skipped []*Result
	maxBrokers := 0
	for _, ch := range []string{chGRPC, chKafka1, chKafka3} {
		if !slices.Contains(cfg.Channels, ch) {
			continue
		}
		for _, link := range cfg.Links {
			for _, m := range cfg.Models {
				for _, n := range cfg.Clients {
					for _, mode := range cfg.Modes {
						c := cell{Model: m, Clients: n, LinkBps: link, Channel: ch, Mode: mode}
						if why := feasible(c, cfg); why != "" {
							log.Warn("skipping cell", "cell", c.Key(), "reason", why)
							skipped = append(skipped, &Result{Cell: c, Command: cfg.Command, Error: "skipped: " + why})
							continue
						}
						plan = append(plan, c)
						maxBrokers = max(maxBrokers, c.Brokers())
					}
				}
			}
		}
	}
	hosts := []testbed.HostSpec{{Name: aggHost}}
	for i := 1; i <= maxBrokers; i++ {
		hosts = append(hosts, testbed.HostSpec{Name: brokerHost(i)})
	}
	var clientHosts []string
	for i := 1; i <= cfg.ClientHosts; i++ {
		hosts = append(hosts, testbed.HostSpec{Name: clientHost(i)})
		clientHosts = append(clientHosts, clientHost(i))
	}
	tb, err := testbed.New(ctx, testbed.Spec{Tag: cfg.Tag, Hosts: hosts, Log: log})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := tb.Close(context.WithoutCancel(ctx)); err != nil {
			log.Error("removing the testbed", "err", err)
		}
	}()
	kafkaSh := filepath.Join(root, "deploy", "kafka", "kafka.sh")
	b := &bed{tb: tb, dir: dir, bins: bins, kafkaSh: kafkaSh, brokerKind: cfg.BrokerKind, clientHosts: clientHosts, log: log}
	defer func() {
		if err := b.stopBrokers(context.WithoutCancel(ctx)); err != nil {
			log.Error("stopping brokers", "err", err)
		}
	}()

	results := slices.Clone(skipped)
	var curLink int64 = -1
	opts := cellOptions{Rounds: cfg.Rounds, Timeout: cfg.CellTimeout, MaxInFlight: cfg.MaxInFlight}
	var runErr error
matrix:
	for i, c := range plan {
		if err := ctx.Err(); err != nil {
			break
		}
		if c.LinkBps != curLink {
			if runErr = b.shapeAll(ctx, c.LinkBps, c.Clients); runErr != nil {
				break
			}
			curLink = c.LinkBps
		}
		if k := c.Brokers(); k > 0 {
			if runErr = b.startBrokers(ctx, k); runErr != nil {
				break
			}
		}
		// Client links carry the sum of their devices' links.
		if runErr = b.shapeClients(ctx, c.LinkBps, c.Clients); runErr != nil {
			break
		}
		for rep := 1; rep <= cfg.Repeats; rep++ {
			log.Info("cell starting", "cell", c.Key(), "repeat", rep, "of", len(plan))
			res, err := b.runCell(ctx, c, rep, opts)
			if res == nil {
				res = &Result{Cell: c, Repeat: rep}
			}
			res.Command = cfg.Command
			if err != nil {
				res.Error = err.Error()
				log.Error("cell failed", "cell", c.Key(), "repeat", rep, "err", err)
				if b.brokers > 0 {
					// A failed job may leave the brokers busy: start afresh.
					if serr := b.stopBrokers(ctx); serr != nil {
						log.Error("stopping brokers", "err", serr)
					}
					if c.Brokers() > 0 {
						if serr := b.startBrokers(ctx, c.Brokers()); serr != nil {
							runErr = serr
						}
					}
				}
			} else {
				log.Info("cell done", "cell", c.Key(), "repeat", rep, "index", i+1, "of", len(plan),
					"round_ms", int(res.RoundMs), "propagation_ms", int(res.PropagationMs),
					"agg_egress_MB", float64(res.AggEgressBytes)/1e6, "efficiency", fmt.Sprintf("%.2f", res.Efficiency),
					"machine_busy", fmt.Sprintf("%.2f", res.CPU.MachineBusy))
			}
			results = append(results, res)
			// Written after every run, so that an interrupted matrix
			// keeps what it measured.
			if err := writeResults(out, readme, results, cfg.Merge); err != nil {
				return results, err
			}
			if runErr != nil {
				break matrix
			}
		}
	}
	if err := writeResults(out, readme, results, cfg.Merge); err != nil {
		return results, err
	}
	log.Info("results written", "dir", out, "readme", readme)
	return results, errors.Join(runErr, ctx.Err())
}

// feasible says why a cell cannot run here, or "".
func feasible(c cell, cfg Config) string {
	s, _ := modelBytes(c.Model)
	// A client holds the model as float64 parameters, its wire copy and
	// its update: about 4 copies of S at once.
	held := int64(c.Clients) * s * 4
	if c.Mode == modeRound {
		held = int64(min(c.Clients, cfg.MaxInFlight*max(cfg.ClientHosts, 1))) * s * 4
	}
	if held > int64(cfg.MaxClientMB)*1e6 {
		return fmt.Sprintf("%d clients × %s would hold about %.0f GB (limit -max-client-mb %d)", c.Clients, c.Model, float64(held)/1e9, cfg.MaxClientMB)
	}
	return ""
}

// shapeAll sets every server host's link to rate, both directions.
func (b *bed) shapeAll(ctx context.Context, rate int64, clients int) error {
	for _, h := range b.tb.Hosts() {
		if strings.HasPrefix(h.Name, "c") {
			continue
		}
		if err := b.tb.SetRates(ctx, h.Name, rate, rate); err != nil {
			return err
		}
	}
	return b.shapeClients(ctx, rate, clients)
}

// shapeClients gives each client host the sum of its devices' links.
func (b *bed) shapeClients(ctx context.Context, rate int64, clients int) error {
	n := len(b.clientHosts)
	for i, h := range b.clientHosts {
		devices := clients*(i+1)/n - clients*i/n
		r := min(int64(max(devices, 1))*rate, int64(clientLinkCap))
		if err := b.tb.SetRates(ctx, h, r, r); err != nil {
			return err
		}
	}
	return nil
}

// runCleanup is `netbench cleanup`: by default the testbeds whose maker
// no longer runs (a killed run's leftovers, never a live run's); with
// -prefix everything under that prefix.
func runCleanup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("netbench cleanup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	prefix := fs.String("prefix", "", "remove every namespace (and the processes in it) whose name starts with this (must start with "+testbed.Root+"); empty: the testbeds of processes that no longer run")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *prefix != "" && !strings.HasPrefix(*prefix, testbed.Root) {
		return cli.Usagef("-prefix %q: must start with %q", *prefix, testbed.Root)
	}
	if err := testbed.Preflight(); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	var (
		removed []string
		err     error
	)
	if *prefix == "" {
		removed, err = testbed.CleanupStale(ctx, log)
	} else {
		removed, err = testbed.Cleanup(ctx, *prefix, log)
	}
	// Working directories of runs: /tmp/fdxnb-<pid>-<tag>, of processes
	// that no longer run unless -prefix names them.
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), testbed.Root+"*"))
	for _, d := range dirs {
		name := filepath.Base(d)
		if *prefix != "" && !strings.HasPrefix(name, *prefix) && !strings.HasPrefix(name+"-", *prefix) {
			continue
		}
		if *prefix == "" && testbed.MakerRuns(name) {
			continue
		}
		if rerr := os.RemoveAll(d); rerr == nil {
			removed = append(removed, d)
		}
	}
	if len(removed) == 0 {
		fmt.Fprintln(stdout, "nothing to remove")
	} else {
		fmt.Fprintf(stdout, "removed %s\n", strings.Join(removed, ", "))
	}
	return err
}
