package main

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/internal/fedtest"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
)

// TestRoles runs a job as processes: aggregator --role leader and two
// --role worker, with long-running training clients. Every round must be
// committed once with all its clients.
func TestRoles(t *testing.T) {
	bin, err := buildAggregator()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	brokers, job := kafkatest.Brokers(t), kafkatest.Job(t)
	const clients, rounds = 6, 3
	common := []string{"--broker", brokers, "--job", job, "--minclients", strconv.Itoa(clients),
		"--numrounds", strconv.Itoa(rounds), "--dataset", "synthetic", "--max-examples", "60",
		"--seed", "11", "--update-partitions", "4", "--log-level", "warn"}
	start := func(extra ...string) chan error {
		cmd := exec.CommandContext(ctx, bin, append(append([]string{}, common...), extra...)...)
		cmd.Stderr = os.Stderr
		done := make(chan error, 1)
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %v: %v", extra, err)
		}
		go func() { done <- cmd.Wait() }()
		return done
	}
	leader := start("--role", "leader")
	w0 := start("--role", "worker", "--worker-name", "w0")
	w1 := start("--role", "worker", "--worker-name", "w1")
	wait := fedtest.Clients(ctx, t, participant.Target{Channel: "kafka", Broker: brokers, Job: job}, clients, fedtest.Options{})
	wait()
	for name, done := range map[string]chan error{"leader": leader, "w0": w0, "w1": w1} {
		if err := <-done; err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	hist, err := kafkachan.History(ctx, kafkachan.Options{Brokers: brokers, Job: job})
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != rounds+1 || !hist[rounds].GetFinal() {
		t.Fatalf("%d models, want %d ending with the final one", len(hist), rounds+1)
	}
	for _, m := range hist[1:] {
		if len(m.GetContributors()) != clients {
			t.Fatalf("model %d has %d contributors, want %d", m.GetRound(), len(m.GetContributors()), clients)
		}
	}
	if err := exec.CommandContext(ctx, bin, append(common, "--role", "worker", "--worker-name", "w", "--strategy", "fedadam")...).Run(); err == nil {
		t.Fatal("--role worker --strategy fedadam ran")
	}
}
