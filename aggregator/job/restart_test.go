package job

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/internal/fedtest"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/embedded"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// restartableBroker is a broker of the test's own, so that stopping it
// disturbs no other test: a real Kafka started by deploy/kafka/kafka.sh
// when the suite runs against real Kafka, else an embedded one with a data
// directory.
type restartableBroker struct {
	t    *testing.T
	addr string
	env  []string
	emb  *embedded.Broker
	dir  string
}

func startRestartable(t *testing.T) *restartableBroker {
	t.Helper()
	b := &restartableBroker{t: t, dir: t.TempDir()}
	port := freePort(t)
	b.addr = "127.0.0.1:" + strconv.Itoa(port)
	if kafkatest.Real() {
		b.env = append(os.Environ(),
			"FDX_KAFKA_PORT="+strconv.Itoa(port),
			"FDX_KAFKA_CONTROLLER_PORT="+strconv.Itoa(freePort(t)),
			"FDX_KAFKA_DIR="+b.dir)
		b.script("start")
		t.Cleanup(func() { b.script("stop") })
		return b
	}
	b.startEmbedded()
	t.Cleanup(func() { b.emb.Close() })
	return b
}

func (b *restartableBroker) script(args ...string) {
	b.t.Helper()
	cmd := exec.Command("bash", append([]string{filepath.Join("..", "..", "deploy", "kafka", "kafka.sh")}, args...)...)
	cmd.Env = b.env
	if out, err := cmd.CombinedOutput(); err != nil {
		b.t.Fatalf("kafka.sh %v: %v\n%s", args, err, out)
	}
}

func (b *restartableBroker) startEmbedded() {
	b.t.Helper()
	var err error
	// The port may linger for a moment after Close; retry until a deadline.
	deadline := time.Now().Add(20 * time.Second)
	for {
		b.emb, err = embedded.Start(embedded.Options{Addr: b.addr, DataDir: b.dir})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		b.t.Fatalf("restart embedded broker: %v", err)
	}
}

func (b *restartableBroker) restart() {
	b.t.Helper()
	if b.env != nil {
		b.script("stop")
		b.script("start", "--keep-data")
		return
	}
	b.emb.Close()
	b.startEmbedded()
}

// waitRound waits until the job has committed the model of round r.
func waitRound(ctx context.Context, t *testing.T, o kafkachan.Options, r int64) {
	t.Helper()
	for {
		hist, err := kafkachan.History(ctx, o)
		if err == nil && len(hist) > 0 && hist[len(hist)-1].GetRound() >= r {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("round %d never committed: %v", r, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestBrokerRestart stops and restarts the broker mid-job: the job is
// delayed, but aggregator and clients reconnect by themselves and every
// round is committed exactly once with every client in it.
func TestBrokerRestart(t *testing.T) {
	b := startRestartable(t)
	jobID := kafkatest.Job(t)
	const clients, rounds = 3, 6
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	data := dataset.NewCatalog()
	waitClients := fedtest.Clients(ctx, t, participant.Target{Channel: participant.ChannelKafka, Broker: b.addr, Job: jobID}, clients, fedtest.Options{Data: data})
	type outcome struct {
		res *Result
		err error
	}
	done := make(chan outcome, 1)
	r := resolve(t, Spec{Job: jobID, Seed: 5, Rounds: RoundsSpec{MinClients: clients, NumRounds: rounds},
		Data: DataSpec{Dataset: "synthetic", MaxExamples: 100, EvalExamples: 200}}, data)
	go func() {
		res, err := RunOn(ctx, r, ChannelConfig{Transport: Kafka, Brokers: b.addr}, Env{}, nil)
		done <- outcome{res, err}
	}()
	ko := kafkachan.Options{Brokers: b.addr, Job: jobID}
	waitRound(ctx, t, ko, 3)
	start := time.Now()
	b.restart()
	t.Logf("broker restarted in %v", time.Since(start).Round(time.Millisecond))
	out := <-done
	if out.err != nil {
		t.Fatalf("job after broker restart: %v", out.err)
	}
	waitClients()
	if out.res.Final.GetRound() != rounds+1 || !out.res.Final.GetFinal() {
		t.Fatalf("final model round %d final=%v", out.res.Final.GetRound(), out.res.Final.GetFinal())
	}
	hist, err := kafkachan.History(ctx, ko)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != rounds+1 {
		t.Errorf("%d committed models, want %d", len(hist), rounds+1)
	}
	for i, m := range hist {
		if m.GetRound() != int64(i+1) {
			t.Fatalf("model %d has round %d", i, m.GetRound())
		}
		if i > 0 && !slices.Equal(m.GetContributors(), []string{"0", "1", "2"}) {
			t.Errorf("round %d contributors %v", i, m.GetContributors())
		}
	}
}
