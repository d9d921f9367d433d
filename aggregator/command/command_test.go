package command

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/internal/cli"
)

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--minclients", "0"}, "min clients 0"},
		{[]string{"--numrounds", "0"}, "rounds 0"},
		{[]string{"--model", "resnet"}, "model \"resnet\""},
		{[]string{"--partition", "weird"}, "partition:"},
		{[]string{"--strategy", "fedfoo"}, "strategy:"},
		{[]string{"--job", "a b"}, "job:"},
		{[]string{"--grpc", "--embedded"}, "does not go with --grpc"},
		{[]string{"--on-short", "maybe"}, "--on-short"},
		{[]string{"--kafka-config", "/nonexistent/file"}, "kafka properties"},
		{[]string{"--lr", "-1"}, "training options"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"--broker", ""}, "no brokers"},
		{[]string{"--client-list", "/nonexistent"}, "--client-list"},
		{[]string{"--tls-cert", "x"}, "go together"},
		{[]string{"--tls-client-ca", "x"}, "add --grpc"},
		{[]string{"--model-key", "/nonexistent"}, "--model-key"},
	} {
		_, err := parseFlags(tc.args, io.Discard, Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
		// A bad command line exits 2, as Go's flag package does; a file
		// that cannot be read is a failure (1).
		wantCode := cli.ExitUsage
		if strings.Contains(tc.want, "kafka properties") || tc.want == "--client-list" || tc.want == "--model-key" {
			wantCode = cli.ExitFailure
		}
		if code := cli.Code("aggregator", err, t.Context(), io.Discard); code != wantCode {
			t.Errorf("parseFlags(%q): exit code %d, want %d", tc.args, code, wantCode)
		}
	}
	c, err := parseFlags([]string{"--broker", "b:1", "--minclients", "4", "--numrounds", "2", "--grpc"}, io.Discard, Options{})
	if err != nil {
		t.Fatal(err)
	}
	spec := c.job.Spec()
	if c.channel.Listen != "b:1" || c.channel.Transport != job.GRPC || spec.Rounds.MinClients != 4 || spec.Rounds.NumRounds != 2 || spec.Data.Partition.NumPartitions != 4 {
		t.Errorf("parsed %+v %+v", spec, c.channel)
	}
	list := filepath.Join(t.TempDir(), "clients")
	if err := os.WriteFile(list, []byte("# ids\n0\n 1 \n\nalice\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err = parseFlags([]string{"--client-list", list}, io.Discard, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if allowed := c.job.Spec().Security.Allowed; len(allowed) != 3 || !allowed["0"] || !allowed["1"] || !allowed["alice"] {
		t.Errorf("client list parsed as %v", allowed)
	}
}

// -h prints the grouped synopsis and is not an error (exit 0).
func TestHelp(t *testing.T) {
	var out strings.Builder
	_, err := parseFlags([]string{"-h"}, &out, Options{})
	if code := cli.Code("aggregator", err, t.Context(), io.Discard); code != cli.ExitOK {
		t.Errorf("-h: exit code %d (err %v), want 0", code, err)
	}
	for _, want := range []string{"usage: aggregator", "Channel:", "Rounds:", "--minclients", "--grpc"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("-h output lacks %q:\n%s", want, out.String())
		}
	}
}

// The rejected: summary lists reasons in one fixed order.
func TestSummaryOrder(t *testing.T) {
	res := &job.Result{Result: &coordinator.Result{Rejected: map[string]int64{"wrong_shape": 2, "undecodable": 1, "duplicate": 3}}}
	var a, b strings.Builder
	printSummary(&a, res)
	printSummary(&b, res)
	if !strings.Contains(a.String(), "rejected: undecodable=1 duplicate=3 wrong_shape=2") || a.String() != b.String() {
		t.Errorf("summary:\n%s", a.String())
	}
}

// A program's Options: its flags are parsed and listed with the command's,
// its check sees the spec the flags describe before it is resolved and
// may complete it, and Embedded makes the embedded broker the default
// that --grpc, not an explicit --embedded, overrides.
func TestOptions(t *testing.T) {
	var n int
	var checked []string
	o := Options{
		Name:     "prog",
		Synopsis: "usage: prog [flags]",
		Embedded: true,
		Flags: func(fs *flag.FlagSet) cli.Group {
			fs.IntVar(&n, "things", 0, "how many things")
			return cli.Group{Title: "Things", Flags: []string{"things"}}
		},
		Check: func(spec *job.Spec, role string) error {
			checked = append(checked, role)
			if n > 9 {
				return cli.Usagef("--things %d: too many", n)
			}
			spec.Sampling.MinAvailableClients = n
			return nil
		},
	}
	c, err := parseFlags([]string{"--things", "5"}, io.Discard, o)
	if err != nil {
		t.Fatal(err)
	}
	if c.channel.Transport != job.EmbeddedKafka || c.job.Spec().Sampling.MinAvailableClients != 5 || len(checked) != 1 {
		t.Errorf("transport %s, population %d, checks %v; want embedded, 5 (from the check), one check",
			c.channel.Transport, c.job.Spec().Sampling.MinAvailableClients, checked)
	}
	if c, err = parseFlags([]string{"--grpc", "--broker", "127.0.0.1:0"}, io.Discard, o); err != nil || c.channel.Transport != job.GRPC {
		t.Errorf("--grpc over an embedded default: %v, %+v; want gRPC", err, c)
	}
	if c, err = parseFlags([]string{"--embedded=false", "--broker", "b:1"}, io.Discard, o); err != nil || c.channel.Transport != job.Kafka || c.channel.Brokers != "b:1" {
		t.Errorf("--embedded=false: %v, %+v; want Kafka on b:1", err, c)
	}
	for _, args := range [][]string{{"--grpc", "--embedded"}, {"--things", "10"}, {"--things", "1", "--role", "leader", "--minclients", "0"}} {
		_, err := parseFlags(args, io.Discard, o)
		if code := cli.Code("prog", err, t.Context(), io.Discard); code != cli.ExitUsage {
			t.Errorf("%q: %v, exit code %d; want a usage error", args, err, code)
		}
	}
	if got := checked[len(checked)-1]; got != "leader" {
		t.Errorf("the check saw role %q, want leader", got)
	}
	var out strings.Builder
	parseFlags([]string{"-h"}, &out, o)
	help := out.String()
	if !strings.HasPrefix(help, "usage: prog [flags]\n\nThings:\n  --things") || !strings.Contains(help, "--minclients") {
		t.Errorf("-h lists the program's group first, then the command's:\n%s", help)
	}
}
