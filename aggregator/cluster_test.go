package main

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
)

// Environment of the 3-node cluster (FDX_KAFKA_NODES=3 kafka.sh start;
// scripts/test.sh starts one).
const (
	envClusterBrokers = "FDX_KAFKA_CLUSTER_BROKERS"
	envClusterDir     = "FDX_KAFKA_CLUSTER_DIR"
)

// TestBrokerLoss runs a job on a 3-broker cluster and, once a few rounds
// are committed, SIGKILLs the broker that plays one part in it:
//   - model-leader: the leader of the model partition (with 3 updates
//     partitions spread over 3 brokers, it leads one of those too);
//   - txn-coordinator: the transaction coordinator of the aggregator's
//     transactional id, which holds the open round's transaction;
//   - group-coordinator: the coordinator of the aggregator's consumer
//     group, which takes the round's offsets.
//
// Each case is its own job. It finishes, every round is committed exactly
// once with every client, and the final model is bit-identical to that of
// the same job run undisturbed. An aggregator that exits because it cannot
// know a transaction's outcome is restarted, as its supervisor would. The
// killed node comes back (kafka.sh start --keep-data) and every partition
// has its full ISR again before the next case, so each case starts from a
// whole cluster.
func TestBrokerLoss(t *testing.T) {
	brokers, dir := os.Getenv(envClusterBrokers), os.Getenv(envClusterDir)
	if brokers == "" || dir == "" {
		t.Skipf("no broker cluster: set %s and %s (scripts/test.sh does)", envClusterBrokers, envClusterDir)
	}
	bin, err := buildAggregator()
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, brokers, dir)
	// A node killed by an earlier run (or case) comes back first.
	c.heal(t)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	base := kafkatest.Job(t)
	ref := brokerLossJob(brokers, base+"-ref", t.TempDir())
	wait := startClients(ctx, t, ref)
	startAggregator(t, bin, ref).finish(t, 3*time.Minute)
	wait()
	want := readOut(t, ref.out).Final.SHA256

	cases := []struct {
		name string
		// victim names the node to kill and the part it plays.
		victim func(ctx context.Context, c *cluster, job string) (int32, error)
	}{
		{"model-leader", func(ctx context.Context, c *cluster, job string) (int32, error) {
			return c.partitionLeader(ctx, kafkachan.ModelTopic(job), 0)
		}},
		{"txn-coordinator", func(ctx context.Context, c *cluster, job string) (int32, error) {
			return coordinatorOf(c.adm.FindTxnCoordinators(ctx, kafkachan.TransactionalID(job)), kafkachan.TransactionalID(job))
		}},
		{"group-coordinator", func(ctx context.Context, c *cluster, job string) (int32, error) {
			return coordinatorOf(c.adm.FindGroupCoordinators(ctx, kafkachan.GroupID(job)), kafkachan.GroupID(job))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.heal(t)
			brokerLossCase(t, c, bin, brokerLossJob(brokers, base+"-"+tc.name, t.TempDir()), want, tc.victim)
		})
	}
	// The next test (or run) finds the cluster whole.
	c.heal(t)
}

// brokerLossJob is the job every case of TestBrokerLoss runs: enough
// rounds that the kill lands mid-job.
func brokerLossJob(brokers, job, dir string) killJob {
	return killJob{brokers: brokers, job: job, out: filepath.Join(dir, "out.json"), clients: 3, rounds: 30}
}

// brokerLossCase runs k, kills the node victim names once killAfter
// models are committed, and checks the job's end against want, the final
// model's digest of an undisturbed run.
func brokerLossCase(t *testing.T, c *cluster, bin string, k killJob, want string,
	victim func(context.Context, *cluster, string) (int32, error)) {
	const killAfter = 4
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	wait := startClients(ctx, t, k)
	r := startAggregator(t, bin, k)
	opts := kafkachan.Options{Brokers: k.brokers, Job: k.job}

	// Mid-job: a few rounds are committed, most are not.
	committed := 0
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for committed < killAfter {
		select {
		case err := <-r.exited:
			r.fatalf(t, "aggregator ended after %d committed models, before the kill: %v", committed, err)
		case <-ctx.Done():
			r.wait(t, 0)
		case <-tick.C:
		}
		if hist, err := kafkachan.History(ctx, opts); err == nil {
			committed = len(hist)
		}
	}
	if committed >= k.rounds+1 {
		t.Fatalf("the job committed all %d models before the kill; raise the rounds", committed)
	}
	node, err := victim(ctx, c, k.job)
	if err != nil {
		t.Fatal(err)
	}
	roles := c.roles(ctx, t, k.job)
	pid := c.kill(t, node)
	t.Logf("SIGKILLed node %d (pid %d) after %d committed models; it was %s", node, pid, committed, strings.Join(roles[node], ", "))

	// The aggregator rides out the loss, or exits with
	// cli.ExitOutcomeUnknown when a transaction's outcome is lost with the
	// node, and finish restarts it as its supervisor would.
	_, restarts := r.finish(t, 3*time.Minute)
	wait()
	got := readOut(t, k.out)
	if got.Final.SHA256 != want {
		t.Errorf("final model %s differs from the undisturbed run's %s", got.Final.SHA256, want)
	}
	hist, err := kafkachan.History(ctx, opts)
	if err != nil {
		t.Fatalf("history: %v", err)
	}
	if err := checkHistory(hist, k.clients, k.rounds); err != nil {
		t.Error(err)
	}
	after := c.roles(ctx, t, k.job)
	t.Logf("job finished: final round %d sha256 %s; %d aggregator restart(s) for an unknown outcome; now %v",
		got.Final.Round, got.Final.SHA256, restarts, after)
}

// cluster is the 3-node cluster of kafka.sh under dir.
type cluster struct {
	brokers, dir string
	cl           *kgo.Client
	// adm finds coordinators, which it asks a broker for every time; the
	// cluster's metadata comes from metadata, not from adm's cache.
	adm *kadm.Client
}

func newCluster(t *testing.T, brokers, dir string) *cluster {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	t.Cleanup(cl.Close)
	return &cluster{brokers: brokers, dir: dir, cl: cl, adm: kadm.NewClient(cl)}
}

// kill SIGKILLs node and returns its pid.
func (c *cluster) kill(t *testing.T, node int32) int {
	t.Helper()
	pidFile := filepath.Join(c.dir, fmt.Sprintf("node-%d", node), "kafka.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("pid of node %d: %v", node, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pid file %s: %v", pidFile, err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL node %d (pid %d): %v", node, pid, err)
	}
	return pid
}

// heal starts the nodes that are down (kafka.sh leaves running nodes
// alone and keeps every node's data) and waits until all three serve and
// every partition, internal ones included, has its full ISR again: a node
// killed while another still catches up would leave partitions below
// their min ISR of 2.
func (c *cluster) heal(t *testing.T) {
	t.Helper()
	// A restarted node replays its log and rejoins the quorum: well under
	// a minute on an idle machine, several on a loaded one (the deadline
	// bounds a broken restart, it is not a timing goal).
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	if n, err := c.live(ctx); err != nil || n < 3 {
		port, ctrl, err := c.ports()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d of 3 brokers live (%v): restarting the missing node(s) with kafka.sh start --keep-data", n, err)
		cmd := exec.CommandContext(ctx, "bash", filepath.Join(kafkatest.RepoRoot(t), "deploy", "kafka", "kafka.sh"), "start", "--keep-data")
		cmd.Env = append(os.Environ(), "FDX_KAFKA_NODES=3", "FDX_KAFKA_DIR="+c.dir,
			"FDX_KAFKA_PORT="+port, "FDX_KAFKA_CONTROLLER_PORT="+ctrl)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("kafka.sh start --keep-data: %v\n%s", err, out)
		}
	}
	var last string
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		n, err := c.live(ctx)
		if err == nil && n == 3 {
			short, err := c.underReplicated(ctx)
			if err == nil && len(short) == 0 {
				return
			}
			last = fmt.Sprintf("partitions below their full ISR: %v (%v)", short, err)
		} else {
			last = fmt.Sprintf("%d live brokers (%v)", n, err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the cluster did not heal: %s", last)
		case <-tick.C:
		}
	}
}

// ports are the client and controller ports of node 1, as kafka.sh's
// cluster mode numbers them; read from its generated config, so that a
// cluster started with any FDX_KAFKA_CONTROLLER_PORT restarts alike.
func (c *cluster) ports() (port, ctrl string, err error) {
	path := filepath.Join(c.dir, "node-1", "config", "server.properties")
	f, err := os.Open(path)
	if err != nil {
		return "", "", fmt.Errorf("node 1's config: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "listeners=")
		if !ok {
			continue
		}
		for _, l := range strings.Split(v, ",") {
			name, addr, _ := strings.Cut(l, "://")
			_, p, _ := strings.Cut(addr, ":")
			if name == "CONTROLLER" {
				ctrl = p
			} else {
				port = p
			}
		}
	}
	if port == "" || ctrl == "" {
		return "", "", fmt.Errorf("%s: no client and controller listeners (%v)", path, sc.Err())
	}
	return port, ctrl, nil
}

// metadata asks a broker for the metadata of topics (all when none) now.
// kadm's Metadata and BrokerMetadata answer from the client's cache, whose
// broker list a restarted node joins only when some topic's entry goes
// stale: a heal that polled it saw 2 live brokers for minutes.
func (c *cluster) metadata(ctx context.Context, topics ...string) (*kmsg.MetadataResponse, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req := kmsg.NewPtrMetadataRequest()
	for _, topic := range topics {
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(topic)
		req.Topics = append(req.Topics, rt)
	}
	return req.RequestWith(rctx, c.cl)
}

// live is the number of brokers the cluster's metadata lists.
func (c *cluster) live(ctx context.Context) (int, error) {
	md, err := c.metadata(ctx)
	if err != nil {
		return 0, err
	}
	return len(md.Brokers), nil
}

// underReplicated lists the partitions of every topic whose ISR is short
// of their replicas, or that have no leader.
func (c *cluster) underReplicated(ctx context.Context) ([]string, error) {
	md, err := c.metadata(ctx)
	if err != nil {
		return nil, err
	}
	var short []string
	for _, td := range md.Topics {
		if err := kerr.ErrorForCode(td.ErrorCode); err != nil {
			return nil, fmt.Errorf("topic %s: %w", topicName(td.Topic), err)
		}
		for _, p := range td.Partitions {
			if p.Leader < 0 || len(p.ISR) < len(p.Replicas) || p.ErrorCode != 0 {
				short = append(short, fmt.Sprintf("%s[%d] leader %d ISR %v of %v (%v)", topicName(td.Topic), p.Partition, p.Leader, p.ISR, p.Replicas, kerr.ErrorForCode(p.ErrorCode)))
			}
		}
	}
	return short, nil
}

// roles names what each node is to job: leader of which partitions,
// coordinator of what.
func (c *cluster) roles(ctx context.Context, t *testing.T, job string) map[int32][]string {
	t.Helper()
	out := map[int32][]string{}
	md, err := c.metadata(ctx, kafkachan.ModelTopic(job), kafkachan.UpdatesTopic(job))
	if err != nil {
		t.Logf("metadata of %s's topics: %v", job, err)
		md = &kmsg.MetadataResponse{}
	}
	for _, td := range md.Topics {
		topic := topicName(td.Topic)
		ps := slices.SortedFunc(slices.Values(td.Partitions), func(a, b kmsg.MetadataResponseTopicPartition) int { return cmp.Compare(a.Partition, b.Partition) })
		for _, p := range ps {
			if len(p.Replicas) != 3 {
				t.Errorf("%s[%d]: replicas %v; want 3", topic, p.Partition, p.Replicas)
			}
			out[p.Leader] = append(out[p.Leader], fmt.Sprintf("leader of %s[%d]", topic, p.Partition))
		}
	}
	if n, err := coordinatorOf(c.adm.FindTxnCoordinators(ctx, kafkachan.TransactionalID(job)), kafkachan.TransactionalID(job)); err == nil {
		out[n] = append(out[n], "transaction coordinator")
	}
	if n, err := coordinatorOf(c.adm.FindGroupCoordinators(ctx, kafkachan.GroupID(job)), kafkachan.GroupID(job)); err == nil {
		out[n] = append(out[n], "group coordinator")
	}
	return out
}

// partitionLeader is the node that leads topic's partition p.
func (c *cluster) partitionLeader(ctx context.Context, topic string, p int32) (int32, error) {
	md, err := c.metadata(ctx, topic)
	if err != nil {
		return 0, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	for _, td := range md.Topics {
		for _, pd := range td.Partitions {
			if topicName(td.Topic) == topic && pd.Partition == p && pd.ErrorCode == 0 && pd.Leader >= 0 {
				return pd.Leader, nil
			}
		}
	}
	return 0, fmt.Errorf("%s[%d]: no leader in %+v", topic, p, md.Topics)
}

// coordinatorOf is the node of key in a FindCoordinator answer.
func coordinatorOf(rs kadm.FindCoordinatorResponses, key string) (int32, error) {
	r, ok := rs[key]
	if !ok {
		return 0, fmt.Errorf("no coordinator answer for %s", key)
	}
	if r.Err != nil {
		return 0, fmt.Errorf("coordinator of %s: %w (%s)", key, r.Err, r.ErrMessage)
	}
	return r.NodeID, nil
}

// topicName is a metadata answer's topic name, "?" when it has none.
func topicName(p *string) string {
	if p == nil {
		return "?"
	}
	return *p
}
