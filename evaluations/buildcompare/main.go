// Command buildcompare measures two builds of the stress tool (package
// evaluations/stress) against each other: it runs each build's sweep in
// turn, alternating which goes first, so that both see the same load on a
// shared machine, and writes the median of the runs of every figure for
// each build, client count and channel, with the Kafka/gRPC ratios, as
// JSON. The tables of evaluations/README.md are rendered from that JSON
// (go run ./evaluations/report).
//
//	go build -o /tmp/stress-old ./evaluations/stress   # from the old source
//	go build -o /tmp/stress-new ./evaluations/stress   # from the new source
//	go run ./evaluations/buildcompare -old /tmp/stress-old -new /tmp/stress-new \
//	    -sweep 10,100,1000 -runs 3 -json evaluations/results/kafkaclient/embedded.json
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/fdxkafka/fdxkafka/evaluations/harness"
	"github.com/fdxkafka/fdxkafka/internal/cli"
)

func main() { cli.Main("buildcompare", run) }

type options struct {
	old, new, oldName, newName string
	sweep, broker, kafkaConf   string
	runs, rounds               int
	jsonPath                   string
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("buildcompare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.old, "old", "", "the old build of the stress tool (required)")
	fs.StringVar(&o.new, "new", "", "the new build of the stress tool (required)")
	fs.StringVar(&o.oldName, "old-name", "old", "what the old build is, for the report")
	fs.StringVar(&o.newName, "new-name", "new", "what the new build is, for the report")
	fs.StringVar(&o.sweep, "sweep", "10,100,1000", "client counts, as the stress tool's -sweep")
	fs.IntVar(&o.runs, "runs", 3, "runs of each build; figures are medians over them")
	fs.IntVar(&o.rounds, "rounds", 5, "rounds per run (figures are over rounds 2 and later)")
	fs.StringVar(&o.broker, "broker", "", "a real Kafka broker for the Kafka runs (default: each build's embedded one)")
	fs.StringVar(&o.kafkaConf, "kafka-config", "", "Kafka properties file for -broker")
	fs.StringVar(&o.jsonPath, "json", filepath.Join("evaluations", "results", "kafkaclient", "embedded.json"), "report file")
	if err := cli.Parse(fs, args); err != nil {
		return nil, err
	}
	switch {
	case o.old == "" || o.new == "":
		return nil, cli.Usagef("-old and -new name the two builds")
	case o.runs < 1:
		return nil, cli.Usagef("-runs %d: want at least 1", o.runs)
	case o.rounds < 2:
		return nil, cli.Usagef("-rounds %d: want at least 2 (round 1 includes start-up)", o.rounds)
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	start := time.Now()
	tmp, err := os.MkdirTemp("", "buildcompare")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	builds := []struct{ name, bin string }{{"old", o.old}, {"new", o.new}}
	sweeps := map[string][]*harness.SweepReport{}
	for i := range o.runs {
		// Alternate which build goes first, so that neither always runs
		// on a machine the other has just warmed (or loaded).
		order := builds
		if i%2 == 1 {
			order = []struct{ name, bin string }{builds[1], builds[0]}
		}
		for _, b := range order {
			fmt.Fprintf(stderr, "run %d/%d: %s build\n", i+1, o.runs, b.name)
			sw, err := sweep(ctx, o, b.bin, filepath.Join(tmp, fmt.Sprintf("%s-%d.json", b.name, i)), stderr)
			if err != nil {
				return fmt.Errorf("run %d of the %s build: %w", i+1, b.name, err)
			}
			sweeps[b.name] = append(sweeps[b.name], sw)
		}
	}
	rep := &harness.Comparison{
		Command:   "go run ./evaluations/buildcompare " + strings.Join(args, " "),
		Builds:    map[string]string{"old": o.oldName, "new": o.newName},
		Broker:    "embedded",
		Runs:      o.runs,
		Rounds:    o.rounds,
		StartedAt: start.UTC(),
	}
	if o.broker != "" {
		rep.Broker = "real"
	}
	if rep.Sizes, err = harness.CompareSweeps(sweeps); err != nil {
		return err
	}
	rep.WallMs = float64(time.Since(start).Microseconds()) / 1000
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(o.jsonPath), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(o.jsonPath, append(b, '\n'), 0o644); err != nil {
		return err
	}
	harness.WriteComparisonMarkdown(stdout, rep)
	fmt.Fprintf(stderr, "wrote %s\n", o.jsonPath)
	return nil
}

// sweep runs one build's sweep and reads its report.
func sweep(ctx context.Context, o *options, bin, jsonPath string, stderr io.Writer) (*harness.SweepReport, error) {
	args := []string{"-sweep", o.sweep, "-rounds", fmt.Sprint(o.rounds), "-channels", "kafka,grpc",
		"-plots", "", "-json", jsonPath, "-log-level", "warn"}
	if o.broker != "" {
		args = append(args, "-broker", o.broker)
	}
	if o.kafkaConf != "" {
		args = append(args, "-kafka-config", o.kafkaConf)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout = io.Discard
	var tail strings.Builder
	cmd.Stderr = io.MultiWriter(&limited{w: &tail, n: 1 << 16}, io.Discard)
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s: %w\n%s", bin, err, tail.String())
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return nil, err
	}
	var sw harness.SweepReport
	if err := json.Unmarshal(b, &sw); err != nil {
		return nil, fmt.Errorf("%s: %w", jsonPath, err)
	}
	return &sw, nil
}

// limited keeps the first n bytes written to it.
type limited struct {
	w io.Writer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
