package job

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/internal/fedtest"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// TestAsyncKafka runs a FedBuff job over Kafka with clients of two speeds
// (a third of them send each update 150 ms after fetching its model), then
// replays the updates topic, in its order, into a fresh job. It checks that
// the job ends after its N versions, that the versions are made of the
// log's first N·K updates, K at a time in log order, each counted once,
// and that the replay publishes bit-identical versions.
func TestAsyncKafka(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	data := dataset.NewCatalog()
	const clients, k, versions = 6, 3, 5
	spec := Spec{Job: kafkatest.Job(t), Seed: 11,
		Rounds: RoundsSpec{Mode: ModeAsync, MinClients: clients, BufferSize: k, NumRounds: versions},
		Data:   DataSpec{MaxExamples: 300, EvalExamples: 1000, Partition: dataset.PartitionSpec{NumPartitions: clients}}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	var wait func()
	ready := func(addr string) {
		wait = fedtest.Clients(ctx, t, participant.Target{Channel: participant.ChannelKafka, Broker: addr, Job: spec.Job}, clients,
			fedtest.Options{Data: data, Delay: func(id string) time.Duration {
				if n, _ := strconv.Atoi(id); n%3 == 2 {
					return 150 * time.Millisecond
				}
				return 0
			}})
	}
	res, err := RunOn(ctx, resolve(t, spec, data), ChannelConfig{Transport: Kafka, Brokers: brokers}, Env{}, ready)
	if err != nil {
		t.Fatal(err)
	}
	wait()
	if len(res.Rounds) != versions || !res.Final.GetFinal() || res.Final.GetRound() != versions+1 {
		t.Fatalf("%d versions, final model round %d (final %v); want %d, then the final model", len(res.Rounds), res.Final.GetRound(), res.Final.GetFinal(), versions)
	}
	if len(res.Rejected) != 0 {
		t.Errorf("rejections %v, want none from honest clients", res.Rejected)
	}
	var stale []float64
	for _, r := range res.Rounds {
		stale = append(stale, r.Strategy["staleness_mean"])
	}
	t.Logf("async over Kafka: final accuracy %.4f, mean staleness per version %v", res.Rounds[versions-1].Accuracy, stale)

	opt := kafkachan.Options{Brokers: brokers, Job: spec.Job}
	hist, err := kafkachan.History(ctx, opt)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != versions+1 {
		t.Fatalf("model topic holds %d models, want %d (each version committed once)", len(hist), versions+1)
	}
	log := readUpdates(ctx, t, brokers, spec.Job)
	if len(log) < versions*k {
		t.Fatalf("updates topic holds %d updates, fewer than the %d counted", len(log), versions*k)
	}
	for v := range versions {
		var want []string
		for _, u := range log[v*k : (v+1)*k] {
			want = append(want, u.GetClientId())
			if !u.GetIsDelta() || u.GetBaseRound() > int64(v+1) {
				t.Errorf("update %s@%d in version %d: delta %v; want a delta on an older version", u.GetClientId(), u.GetBaseRound(), v+1, u.GetIsDelta())
			}
		}
		slices.Sort(want)
		if got := hist[v+1].GetContributors(); !slices.Equal(got, want) {
			t.Errorf("version %d contributors %v, want the log's updates %d to %d: %v", v+2, got, v*k, (v+1)*k-1, want)
		}
	}

	// The same updates in the same order make the same versions.
	replay := spec
	replay.Job = kafkatest.Job(t) + "-replay"
	feed := func(addr string) {
		cl, err := kafkachan.Dial(ctx, kafkachan.ClientOptions{Options: kafkachan.Options{Brokers: addr, Job: replay.Job}})
		if err != nil {
			t.Error(err)
			return
		}
		go func() {
			defer cl.Close()
			for _, u := range log {
				u = proto.Clone(u).(*fdxv1.Update)
				u.Job = replay.Job
				if err := cl.Submit(ctx, u); err != nil { // acknowledged one by one: in order
					t.Error(err)
					return
				}
			}
		}()
	}
	rres, err := RunOn(ctx, resolve(t, replay, data), ChannelConfig{Transport: Kafka, Brokers: brokers}, Env{}, feed)
	if err != nil {
		t.Fatal(err)
	}
	rhist, err := kafkachan.History(ctx, kafkachan.Options{Brokers: brokers, Job: replay.Job})
	if err != nil {
		t.Fatal(err)
	}
	if len(rhist) != len(hist) || len(rres.Rounds) != versions {
		t.Fatalf("replay: %d models, %d versions; want %d, %d", len(rhist), len(rres.Rounds), len(hist), versions)
	}
	specs := resolve(t, spec, data).Shapes()
	for i := range hist {
		a, err := tensor.Decode(hist[i].GetParams(), specs)
		if err != nil {
			t.Fatal(err)
		}
		b, err := tensor.Decode(rhist[i].GetParams(), specs)
		if err != nil {
			t.Fatal(err)
		}
		if d := firstDiff(a, b); d != "" || !slices.Equal(hist[i].GetContributors(), rhist[i].GetContributors()) {
			t.Errorf("version %d differs in the replay: %s; contributors %v vs %v", hist[i].GetRound(), d, hist[i].GetContributors(), rhist[i].GetContributors())
		}
	}
}

// firstDiff describes the first value whose bits differ, "" for none.
func firstDiff(a, b [][]float32) string {
	for i := range a {
		for j := range a[i] {
			if math.Float32bits(a[i][j]) != math.Float32bits(b[i][j]) {
				return fmt.Sprintf("tensor %d value %d: %v vs %v", i, j, a[i][j], b[i][j])
			}
		}
	}
	return ""
}

// readUpdates returns every update record of job's updates topic (one
// partition in async mode), in log order.
func readUpdates(ctx context.Context, t *testing.T, brokers, job string) []*fdxv1.Update {
	t.Helper()
	topic := kafkachan.UpdatesTopic(job)
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	md, err := adm.Metadata(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(md.Topics[topic].Partitions); n != 1 {
		t.Fatalf("async job's updates topic has %d partitions, want 1", n)
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	end, ok := ends.Lookup(topic, 0)
	if !ok || end.Err != nil {
		t.Fatalf("end offset of %s[0]: %v", topic, end.Err)
	}
	cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}})
	var out []*fdxv1.Update
	// Clients write updates without transactions: every offset below
	// the end holds a record.
	for next := int64(0); next < end.Offset; {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d updates, up to offset %d of %d: %v", len(out), next, end.Offset, ctx.Err())
		}
		if err := fs.Err(); err != nil {
			t.Fatal(err)
		}
		for _, r := range fs.Records() {
			next = r.Offset + 1
			if r.Offset >= end.Offset {
				continue
			}
			u := &fdxv1.Update{}
			if err := proto.Unmarshal(r.Value, u); err != nil {
				t.Fatalf("update at offset %d: %v", r.Offset, err)
			}
			out = append(out, u)
		}
	}
	return out
}
