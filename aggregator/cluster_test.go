package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
)

// Environment of the 3-node cluster (FDX_KAFKA_NODES=3 kafka.sh start;
// scripts/test.sh starts one).
const (
	envClusterBrokers = "FDX_KAFKA_CLUSTER_BROKERS"
	envClusterDir     = "FDX_KAFKA_CLUSTER_DIR"
)

// partitionLeaders returns the node id leading each partition of topic.
func partitionLeaders(t *testing.T, brokers, topic string) []int32 {
	t.Helper()
	cm := kafka.ConfigMap{"bootstrap.servers": brokers, "go.logs.channel.enable": true}
	p, err := kafka.NewProducer(&cm)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	go func() {
		for range p.Logs() {
		}
	}()
	md, err := p.GetMetadata(&topic, false, 10000)
	if err != nil {
		t.Fatalf("metadata of %s: %v", topic, err)
	}
	tm := md.Topics[topic]
	leaders := make([]int32, len(tm.Partitions))
	for _, pm := range tm.Partitions {
		if len(pm.Replicas) != 3 || len(pm.Isrs) < 2 {
			t.Errorf("%s[%d]: replicas %v, ISR %v; want 3 replicas", topic, pm.ID, pm.Replicas, pm.Isrs)
		}
		leaders[pm.ID] = pm.Leader
	}
	return leaders
}

// TestBrokerLoss runs a job on a 3-broker cluster and SIGKILLs the broker
// that leads the model partition (and, with 3 updates partitions spread over
// 3 brokers, one updates partition) after a few rounds. The job finishes,
// every round is committed exactly once with every client, and the final
// model is bit-identical to that of the same job run undisturbed.
func TestBrokerLoss(t *testing.T) {
	brokers, dir := os.Getenv(envClusterBrokers), os.Getenv(envClusterDir)
	if brokers == "" || dir == "" {
		t.Skipf("no broker cluster: set %s and %s (scripts/test.sh does)", envClusterBrokers, envClusterDir)
	}
	bin, err := buildAggregator()
	if err != nil {
		t.Fatal(err)
	}
	const clients, rounds, killAfter = 3, 30, 3
	if n := clusterSize(t, brokers); n != 3 {
		t.Fatalf("the cluster at %s has %d live brokers, want 3 (a node killed by an earlier run comes back with FDX_KAFKA_NODES=3 kafka.sh start --keep-data)", brokers, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	tmp := t.TempDir()
	k := killJob{brokers: brokers, job: kafkatest.Job(t), out: filepath.Join(tmp, "out.json"), clients: clients, rounds: rounds}

	ref := k
	ref.job, ref.out = k.job+"-ref", k.out+".ref"
	wait := startClients(ctx, t, ref)
	startAggregator(t, bin, ref).finish(t, 3*time.Minute)
	wait()
	want := readOut(t, ref.out).Final.SHA256

	wait = startClients(ctx, t, k)
	r := startAggregator(t, bin, k)
	opts := kafkachan.Options{Brokers: brokers, Job: k.job}
	// Wait until a few rounds are committed, then kill mid-job.
	var committed int
	for committed < killAfter+1 {
		select {
		case err := <-r.exited:
			r.fatalf(t, "aggregator exited after %d models, before the kill: %v", committed, err)
		case <-ctx.Done():
			r.wait(t, 0)
		case <-time.After(100 * time.Millisecond):
		}
		hist, err := kafkachan.History(ctx, opts)
		if err == nil {
			committed = len(hist)
		}
	}
	modelLeader := partitionLeaders(t, brokers, kafkachan.ModelTopic(k.job))[0]
	updLeaders := partitionLeaders(t, brokers, kafkachan.UpdatesTopic(k.job))
	if !strings.Contains(fmt.Sprint(updLeaders), strconv.Itoa(int(modelLeader))) {
		t.Logf("note: node %d leads the model partition but none of the updates partitions (leaders %v)", modelLeader, updLeaders)
	}
	pidFile := filepath.Join(dir, fmt.Sprintf("node-%d", modelLeader), "kafka.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("pid of node %d: %v", modelLeader, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pid file %s: %v", pidFile, err)
	}
	if committed >= rounds+1 {
		t.Fatalf("the job committed all %d models before the kill; raise the rounds", committed)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL node %d (pid %d): %v", modelLeader, pid, err)
	}
	t.Logf("SIGKILLed node %d (pid %d), leader of the model partition and of updates partitions %v, after %d committed models", modelLeader, pid, updLeaders, committed)

	// The aggregator rides out the loss, or exits with
	// cli.ExitOutcomeUnknown when a transaction's outcome is lost with the
	// node, and finish restarts it as its supervisor would.
	_, restarts := r.finish(t, 3*time.Minute)
	wait()
	t.Logf("aggregator restarts after the broker loss: %d", restarts)
	got := readOut(t, k.out)
	if got.Final.SHA256 != want {
		t.Errorf("final model %s differs from the undisturbed run's %s", got.Final.SHA256, want)
	}
	hist, err := kafkachan.History(ctx, opts)
	if err != nil {
		t.Fatalf("history: %v", err)
	}
	if err := checkHistory(hist, clients, rounds); err != nil {
		t.Error(err)
	}
	newLeader := partitionLeaders(t, brokers, kafkachan.ModelTopic(k.job))[0]
	t.Logf("job finished: final round %d sha256 %s; model partition now led by node %d", got.Final.Round, got.Final.SHA256, newLeader)
}

// clusterSize is the number of live brokers.
func clusterSize(t *testing.T, brokers string) int {
	t.Helper()
	cm := kafka.ConfigMap{"bootstrap.servers": brokers, "go.logs.channel.enable": true}
	p, err := kafka.NewProducer(&cm)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	go func() {
		for range p.Logs() {
		}
	}()
	md, err := p.GetMetadata(nil, false, 10000)
	if err != nil {
		t.Fatalf("cluster metadata: %v", err)
	}
	return len(md.Brokers)
}
