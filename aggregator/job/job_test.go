package job

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/function"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
)

// resolve resolves spec on data, failing the test if it is refused.
func resolve(t *testing.T, spec Spec, data *dataset.Catalog) *Resolved {
	t.Helper()
	r, err := spec.Resolve(data)
	if err != nil {
		t.Fatalf("resolve %+v: %v", spec, err)
	}
	return r
}

// runFederation runs a job and drives its clients through the function's
// real HTTP handler, each invocation taking part in every round. The
// function reads the data set from the job's catalog.
func runFederation(t *testing.T, resolved *Resolved, cc ChannelConfig, env Env, clients int) *Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	o := resolved.Spec()
	fn := httptest.NewServer(function.NewServer(function.Config{Data: resolved.Data()}))
	defer fn.Close()
	channel := "kafka"
	if cc.Transport == GRPC {
		channel = "grpc"
	}
	var wg sync.WaitGroup
	invokeErrs := make(chan error, clients)
	ready := func(addr string) {
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body := fmt.Sprintf(`{"broker": %q, "client_id": "%d", "channel": %q, "job": %q, "rounds": %d, "timeout_s": 240}`,
					addr, i, channel, o.Job, o.Rounds.NumRounds)
				resp, err := http.Post(fn.URL, "application/json", strings.NewReader(body))
				if err != nil {
					invokeErrs <- err
					return
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != http.StatusOK {
					invokeErrs <- fmt.Errorf("client %d: HTTP %d: %s", i, resp.StatusCode, b)
					return
				}
				var r function.Response
				if err := json.Unmarshal(b, &r); err != nil {
					invokeErrs <- fmt.Errorf("client %d: %v in %s", i, err, b)
					return
				}
				if len(r.Rounds) != o.Rounds.NumRounds || r.BytesReceived == 0 || r.BytesSent == 0 {
					invokeErrs <- fmt.Errorf("client %d: summary %s: want %d rounds and nonzero bytes", i, b, o.Rounds.NumRounds)
				}
			}()
		}
	}
	res, err := RunOn(ctx, resolved, cc, env, ready)
	if err != nil {
		t.Fatalf("%s job: %v", channel, err)
	}
	wg.Wait()
	close(invokeErrs)
	for err := range invokeErrs {
		t.Error(err)
	}
	return res
}

// TestEndToEndKafkaAndGRPC is the core acceptance test: 10 clients, 3
// rounds of MNIST logistic regression over each channel; both reach 0.85
// test accuracy and produce the bit-identical final model.
func TestEndToEndKafkaAndGRPC(t *testing.T) {
	data := dataset.NewCatalog()
	spec := Spec{Job: kafkatest.Job(t), Seed: 7, Rounds: RoundsSpec{MinClients: 10, NumRounds: 3}, Training: TrainingSpec{Model: "logreg"},
		Data: DataSpec{Partition: dataset.PartitionSpec{Scheme: "iid", NumPartitions: 10}}}
	kres := runFederation(t, resolve(t, spec, data), ChannelConfig{Transport: Kafka, Brokers: kafkatest.Brokers(t)}, Env{}, 10)
	gres := runFederation(t, resolve(t, spec, data), ChannelConfig{Transport: GRPC, Listen: "127.0.0.1:0"}, Env{}, 10)

	for _, res := range []*Result{kres, gres} {
		if len(res.Rounds) != 3 {
			t.Fatalf("%s: %d rounds, want 3", res.Channel, len(res.Rounds))
		}
		for _, r := range res.Rounds {
			if r.Clients != 10 || len(r.Contributors) != 10 {
				t.Errorf("%s round %d: %d clients %v, want 10", res.Channel, r.Round, r.Clients, r.Contributors)
			}
		}
		last := res.Rounds[len(res.Rounds)-1]
		t.Logf("%s: final accuracy %.4f loss %.4f, total %.0f ms, rounds %v", res.Channel, last.Accuracy, last.Loss, res.Duration, durations(res))
		if last.Accuracy < 0.85 {
			t.Errorf("%s: final accuracy %.4f < 0.85", res.Channel, last.Accuracy)
		}
		if !res.Final.GetFinal() || res.Final.GetRound() != 4 {
			t.Errorf("%s: final model round %d final=%v, want round 4 final", res.Channel, res.Final.GetRound(), res.Final.GetFinal())
		}
		if len(res.Rejected) != 0 {
			t.Errorf("%s: rejections %v, want none", res.Channel, res.Rejected)
		}
	}
	kd, gd := Digest(kres.Final), Digest(gres.Final)
	if kd != gd {
		t.Errorf("final models differ: kafka %s, grpc %s", kd, gd)
	}
	// The Kafka aggregator writes each model once; gRPC sends it per client.
	if kres.Stats.MessagesSent != 4 {
		t.Errorf("kafka aggregator sent %d records, want 4 models", kres.Stats.MessagesSent)
	}
	if gres.Stats.MessagesSent < 30 {
		t.Errorf("grpc aggregator sent %d messages, want at least 30 model downloads", gres.Stats.MessagesSent)
	}
}

func durations(res *Result) []string {
	var out []string
	for _, r := range res.Rounds {
		out = append(out, fmt.Sprintf("%.0fms", r.DurationMs))
	}
	return out
}

// TestTwoNN runs the FedAvg paper's 2NN (199,210 parameters, a 0.8 MB
// model record) through the Kafka channel end to end.
func TestTwoNN(t *testing.T) {
	o := Spec{Job: kafkatest.Job(t), Seed: 3, Rounds: RoundsSpec{MinClients: 2, NumRounds: 2}, Training: TrainingSpec{Model: "2nn"},
		Data: DataSpec{MaxExamples: 300, EvalExamples: 1000, Partition: dataset.PartitionSpec{NumPartitions: 2}}}
	res := runFederation(t, resolve(t, o, nil), ChannelConfig{Transport: Kafka, Brokers: kafkatest.Brokers(t)}, Env{}, 2)
	if len(res.Rounds) != 2 || res.Final.GetRound() != 3 {
		t.Fatalf("2nn job: %d rounds, final round %d", len(res.Rounds), res.Final.GetRound())
	}
	if acc := res.Rounds[1].Accuracy; acc < 0.5 {
		t.Errorf("2nn accuracy after 2 rounds on 600 examples: %.3f, want > 0.5", acc)
	}
	if b := res.Stats.BytesSent / res.Stats.MessagesSent; b < 790_000 {
		t.Errorf("model records of %d bytes; the 2nn's should be about 0.8 MB", b)
	}
	t.Logf("2nn: accuracy %.4f, %d bytes per model record", res.Rounds[1].Accuracy, res.Stats.BytesSent/res.Stats.MessagesSent)
}
