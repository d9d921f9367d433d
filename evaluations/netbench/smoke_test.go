//go:build netns

// The smoke test builds a real testbed, so it needs root; it sits behind
// the netns build tag (see testbed/testbed_test.go) and fails, saying
// why, when run with the tag but without root.
package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/evaluations/netbench/testbed"
)

// TestSmoke runs the smallest matrix end to end on the embedded broker (no
// Java): an aggregator, one broker and one client host, 3 clients, 1
// round, both channels, over shaped links. The links' counters must show
// the model's copies where each channel sends them, and nothing of the
// testbed may outlive the run.
func TestSmoke(t *testing.T) {
	if err := testbed.Preflight(); err != nil {
		t.Fatalf("cannot test the network testbed here: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	const tag = "smoketest"
	t.Cleanup(func() {
		if left, err := testbed.Cleanup(context.Background(), testbed.Prefix(tag), nil); err != nil || len(left) > 0 {
			t.Errorf("the test's own cleanup found %v (err %v)", left, err)
		}
	})
	out := t.TempDir()
	var logs strings.Builder
	cfg := Config{
		Models: []string{"logreg"}, Clients: []int{3}, Links: []int64{100e6},
		Channels: []string{chGRPC, chKafka1}, Modes: []string{modeLong},
		Rounds: 1, Repeats: 1, ClientHosts: 1, BrokerKind: brokerKfake,
		MaxClientMB: 1000, MaxInFlight: 8, CellTimeout: 3 * time.Minute,
		Out: out, Readme: filepath.Join(out, "README.md"), Tag: tag,
		Log: slog.New(slog.NewTextHandler(&logs, nil)),
	}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	results, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v\nlog:\n%s", err, lastLines(logs.String(), 40))
	}

	s, err := modelBytes("logreg")
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 2 {
		t.Fatalf("%d results, want 2 (grpc, kafka1)", len(results))
	}
	for _, r := range results {
		if r.Error != "" {
			t.Errorf("%s: %s", r.Key(), r.Error)
			continue
		}
		if len(r.PerRound) != 1 || r.PropagationMs <= 0 || r.Messages <= 0 {
			t.Errorf("%s: rounds %v, propagation %v ms, %d messages: want 1 round, both positive", r.Key(), r.PerRound, r.PropagationMs, r.Messages)
		}
		agg, c1 := r.Links[aggHost], r.Links[clientHost(1)]
		// Every client receives the round's model through its host's
		// link, whichever channel carries it.
		if c1.Ingress.Bytes < 3*s {
			t.Errorf("%s: the client host's link carried %d bytes in, want ≥ 3 models of %d", r.Key(), c1.Ingress.Bytes, s)
		}
		switch r.Channel {
		case chGRPC:
			if agg.Egress.Bytes < 3*s {
				t.Errorf("grpc: the aggregator's link carried %d bytes out, want ≥ 3 models of %d (one per client)", agg.Egress.Bytes, s)
			}
		case chKafka1:
			b1 := r.Links[brokerHost(1)]
			if agg.Egress.Bytes < 2*s || agg.Egress.Bytes >= 3*s+s/2 {
				// The aggregator publishes round 1's and the final model,
				// each once; a per-client copy would be ≥ 3 more.
				t.Errorf("kafka1: the aggregator's link carried %d bytes out, want 2 models of %d (+ overhead), not one per client", agg.Egress.Bytes, s)
			}
			if b1.Egress.Bytes < 3*s {
				t.Errorf("kafka1: the broker's link carried %d bytes out, want ≥ 3 models of %d", b1.Egress.Bytes, s)
			}
		}
	}
	for _, f := range []string{resultsJSON, "README.md"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("the run wrote no %s: %v", f, err)
		}
	}

	// Nothing of the testbed is left: namespaces, interfaces in the
	// machine's namespace, the working directory.
	prefix := testbed.Prefix(tag)
	nss, err := testbed.Namespaces(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	links, err := testbed.RootLinks(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(nss)+len(links) > 0 {
		t.Errorf("left behind: namespaces %v, interfaces %v", nss, links)
	}
	if _, err := os.Stat(filepath.Join(os.TempDir(), strings.TrimSuffix(prefix, "-"))); !os.IsNotExist(err) {
		t.Errorf("the working directory %s is still there (stat: %v)", strings.TrimSuffix(prefix, "-"), err)
	}
}
