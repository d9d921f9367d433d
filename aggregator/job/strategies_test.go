package job

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/function"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// TestEveryStrategyBothChannels runs a small synthetic job with every
// strategy by its Flower name, over Kafka and over gRPC, each client an
// invocation of the function's HTTP handler: every round closes with every
// client, nothing is rejected, and both channels give the bit-identical
// final model.
func TestEveryStrategyBothChannels(t *testing.T) {
	data := dataset.NewCatalog()
	const clients, rounds = 5, 2
	for _, name := range strategy.Names() {
		if name == "median" || name == "trimmedmean" {
			continue // aliases: the same code as fedmedian and fedtrimmedavg
		}
		t.Run(name, func(t *testing.T) {
			spec := Spec{Job: kafkatest.Job(t), Seed: 11, Rounds: RoundsSpec{MinClients: clients, NumRounds: rounds},
				Data:     DataSpec{Dataset: "synthetic", MaxExamples: 100, EvalExamples: 200, Partition: dataset.PartitionSpec{NumPartitions: clients}},
				Strategy: strategy.Config{Name: name, Seed: 5}}
			if name == "dpfedavg-adaptive" {
				// The default σ_b = n/20 needs 11 clients for z = 1.
				spec.Strategy.ClippedCountStddev = 1
			}
			kres := runFederation(t, resolve(t, spec, data), ChannelConfig{Transport: Kafka, Brokers: kafkatest.Brokers(t)}, Env{}, clients)
			spec.Job = kafkatest.Job(t)
			gres := runFederation(t, resolve(t, spec, data), ChannelConfig{Transport: GRPC, Listen: "127.0.0.1:0"}, Env{}, clients)
			for _, res := range []*Result{kres, gres} {
				if len(res.Rounds) != rounds || res.Final.GetRound() != rounds+1 || !res.Final.GetFinal() {
					t.Fatalf("%s: %d rounds, final model round %d", res.Channel, len(res.Rounds), res.Final.GetRound())
				}
				for _, r := range res.Rounds {
					if r.Clients != clients {
						t.Errorf("%s round %d: %d clients, want %d", res.Channel, r.Round, r.Clients, clients)
					}
					if r.FitMetrics["loss"] <= 0 || r.FitMetrics["accuracy"] <= 0 {
						t.Errorf("%s round %d: fit metrics %v, want the clients' loss and accuracy", res.Channel, r.Round, r.FitMetrics)
					}
				}
				if len(res.Rejected) != 0 {
					t.Errorf("%s: rejections %v", res.Channel, res.Rejected)
				}
				// FedProx's μ reaches the clients through every round's
				// train config, the final model's included; other
				// strategies send none.
				wantMu := 0.0
				if name == "fedprox" {
					wantMu = 0.01
				}
				if mu := res.Final.GetTrainConfig().GetProximalMu(); mu != wantMu {
					t.Errorf("%s: final model's train config has μ %v, want %v", res.Channel, mu, wantMu)
				}
				if strings.HasPrefix(name, "dpfedavg") && res.Rounds[rounds-1].Strategy["dp_epsilon"] <= 0 {
					t.Errorf("%s: DP report %v, want a positive epsilon", res.Channel, res.Rounds[rounds-1].Strategy)
				}
			}
			if kd, gd := Digest(kres.Final), Digest(gres.Final); kd != gd {
				t.Errorf("final models differ: kafka %s, grpc %s", kd, gd)
			}
			t.Logf("%s: accuracy %.4f → %.4f", name, kres.Initial.Accuracy, kres.Rounds[rounds-1].Accuracy)
		})
	}
}

// invocation is one client's answer from the function.
type invocation struct {
	client string
	rounds int // asked for
	code   int
	resp   function.Response
	body   string
}

// invoke posts one request to the function.
func invoke(fnURL, addr, channelName, job, client string, rounds int) invocation {
	body := fmt.Sprintf(`{"broker": %q, "client_id": %q, "channel": %q, "job": %q, "rounds": %d, "timeout_s": 120}`,
		addr, client, channelName, job, rounds)
	resp, err := http.Post(fnURL, "application/json", strings.NewReader(body))
	if err != nil {
		return invocation{client: client, rounds: rounds, body: err.Error()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	inv := invocation{client: client, rounds: rounds, code: resp.StatusCode, body: string(b)}
	json.Unmarshal(b, &inv.resp)
	return inv
}

// TestSamplingAndFederatedEvaluation: with fraction-fit 0.5 of 8 clients
// each round draws 4 to train, named in the model record as a function of
// seed and round, and fraction-evaluate 0.25 draws 2 to evaluate. Every
// client's function is invoked for every round: the unsampled ones answer
// 200 "not sampled" without training, an update from an unsampled client
// is refused as not_sampled, and the round's federated figures are the
// example-weighted mean of the evaluators' own figures, bit-identical over
// Kafka and gRPC.
func TestSamplingAndFederatedEvaluation(t *testing.T) {
	data := dataset.NewCatalog()
	const n, rounds = 8, 3
	var pop []string
	for i := range n {
		pop = append(pop, strconv.Itoa(i))
	}
	var results []*Result
	for _, channelName := range []string{"kafka", "grpc"} {
		t.Run(channelName, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			spec := Spec{Job: kafkatest.Job(t), Seed: 21, Rounds: RoundsSpec{MinClients: 2, NumRounds: rounds},
				Data:     DataSpec{Dataset: "synthetic", MaxExamples: 100, EvalExamples: 200, Partition: dataset.PartitionSpec{NumPartitions: n}},
				Sampling: SamplingSpec{MinAvailableClients: n, FractionFit: 0.5, FractionEvaluate: 0.25}}
			cc := ChannelConfig{Transport: Kafka, Brokers: kafkatest.Brokers(t)}
			if channelName == "grpc" {
				cc = ChannelConfig{Transport: GRPC, Listen: "127.0.0.1:0"}
			}
			fit1, _, _ := rules.Draw(spec.Seed, 1, rules.RoleFit, pop, 4)
			eval1, _, _ := rules.Draw(spec.Seed, 1, rules.RoleEvaluate, pop, 2)
			outsider := ""
			for _, id := range pop {
				if !slices.Contains(fit1, id) && !slices.Contains(eval1, id) {
					outsider = id
					break
				}
			}
			if outsider == "" {
				t.Fatalf("seed gives no client outside both samples of round 1: fit %v eval %v", fit1, eval1)
			}
			fn := httptest.NewServer(function.NewServer(function.Config{Data: data}))
			defer fn.Close()
			var wg sync.WaitGroup
			invs := make(chan invocation, n+1)
			forged := make(chan error, 1)
			ready := func(addr string) {
				wg.Go(func() {
					// Before any sampled client: a lone invocation of an
					// unsampled one, and an update it sends anyway.
					invs <- invoke(fn.URL, addr, channelName, spec.Job, outsider, 1)
					forged <- sendUnsampled(ctx, addr, channelName, spec.Job, outsider)
					for _, id := range pop {
						wg.Go(func() { invs <- invoke(fn.URL, addr, channelName, spec.Job, id, rounds) })
					}
				})
			}
			res, err := RunOn(ctx, resolve(t, spec, data), cc, Env{}, ready)
			if err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			close(invs)
			if err := <-forged; err != nil {
				t.Error(err)
			}
			results = append(results, res)

			byClient := map[string]function.Response{}
			for inv := range invs {
				if inv.code != http.StatusOK {
					t.Errorf("client %s: HTTP %d %s", inv.client, inv.code, inv.body)
					continue
				}
				if inv.rounds == 1 {
					// The lone invocation.
					// Over Kafka nothing at all is sent; over gRPC only the
					// model request.
					if inv.resp.Rounds[0].Status != participant.StatusNotSampled || inv.resp.Note != participant.NoteNotSampled ||
						inv.resp.Rounds[0].Examples != 0 || (channelName == "kafka" && inv.resp.MessagesSent != 0) {
						t.Errorf("unsampled invocation answered %s; want status not_sampled, the note and no update sent", inv.body)
					}
					continue
				}
				byClient[inv.client] = inv.resp
			}
			if len(res.Rounds) != rounds || !res.Final.GetFinal() {
				t.Fatalf("%d rounds, final %v; want %d rounds", len(res.Rounds), res.Final.GetFinal(), rounds)
			}
			for _, r := range res.Rounds {
				t.Logf("round %d: sampled %v, accuracy %.4f, federated %+v", r.Round, r.Sampled, r.Accuracy, *r.Federated)
				fit, _, _ := rules.Draw(spec.Seed, r.Round, rules.RoleFit, pop, 4)
				eval, _, _ := rules.Draw(spec.Seed, r.Round, rules.RoleEvaluate, pop, 2)
				if !slices.Equal(r.Sampled, fit) || !slices.Equal(r.Contributors, fit) {
					t.Errorf("round %d: sampled %v contributors %v, want the draw %v", r.Round, r.Sampled, r.Contributors, fit)
				}
				f := r.Federated
				if f == nil || f.Clients != 2 || f.ModelRound != r.Round {
					t.Fatalf("round %d: federated %+v, want 2 evaluators of model %d", r.Round, f, r.Round)
				}
				// The clients' own figures, weighted by their held-out
				// examples (100 examples, 20 held out each).
				var sum float64
				for _, id := range eval {
					rr, ok := roundOf(byClient[id], r.Round)
					if !ok || rr.EvalAccuracy == nil {
						t.Fatalf("round %d: evaluator %s reported no evaluation: %+v", r.Round, id, rr)
					}
					sum += 20 * *rr.EvalAccuracy
				}
				if want := sum / 40; math.Abs(f.Accuracy-want) > 1e-12 || f.Examples != 40 {
					t.Errorf("round %d: federated accuracy %v on %d examples, want %v on 40", r.Round, f.Accuracy, f.Examples, want)
				}
				for _, id := range pop {
					rr, ok := roundOf(byClient[id], r.Round)
					if !ok && !slices.Contains(fit, id) && !slices.Contains(eval, id) {
						// An unsampled client invoked late (a loaded
						// machine) may have joined after this round
						// closed: nothing to check.
						continue
					}
					got := rr.Status
					want := participant.StatusNotSampled
					switch {
					case slices.Contains(fit, id):
						want = participant.StatusTrained
					case slices.Contains(eval, id):
						want = participant.StatusEvaluated
					}
					if got != want {
						t.Errorf("round %d client %s: status %q, want %q", r.Round, id, got, want)
					}
				}
			}
			// Over Kafka the forged update may be read after round 1 closed
			// (stale); over gRPC it is refused as it arrives.
			rej := res.Rejected[string(rules.NotSampled)] + res.Rejected[string(rules.StaleRound)]
			if rej != 1 || (channelName == "grpc" && res.Rejected[string(rules.NotSampled)] != 1) {
				t.Errorf("rejections %v, want the one unsampled update", res.Rejected)
			}
		})
	}
	if len(results) == 2 {
		if kd, gd := Digest(results[0].Final), Digest(results[1].Final); kd != gd {
			t.Errorf("final models differ: kafka %s, grpc %s", kd, gd)
		}
		for i := range results[0].Rounds {
			k, g := results[0].Rounds[i].Federated, results[1].Rounds[i].Federated
			if k == nil || g == nil || math.Float64bits(k.Accuracy) != math.Float64bits(g.Accuracy) || math.Float64bits(k.Loss) != math.Float64bits(g.Loss) {
				t.Errorf("round %d federated figures differ: kafka %+v, grpc %+v", i+1, k, g)
			}
		}
	}
}

// sendUnsampled submits an update for round 1 from a client the round did
// not sample, as a client ignoring the record would.
func sendUnsampled(ctx context.Context, addr, channelName, job, client string) error {
	ch, err := participant.Transport{}.Dial(ctx, participant.Target{Channel: channelName, Broker: addr, Job: job, ClientID: client})
	if err != nil {
		return err
	}
	defer ch.Close()
	m, err := ch.Model(ctx, 1)
	if err != nil {
		return err
	}
	if rules.Sampled(m, rules.RoleFit, client) {
		return fmt.Errorf("client %s is in round 1's sample %v", client, m.GetSampling().GetFitClients())
	}
	err = ch.Submit(ctx, &fdxv1.Update{Job: job, ClientId: client, BaseRound: 1, NumExamples: 10, Params: m.GetParams()})
	switch {
	case channelName == "grpc" && !errors.Is(err, channel.ErrRejected):
		return fmt.Errorf("unsampled update over gRPC: %v, want rejected", err)
	case channelName == "grpc" && !strings.Contains(err.Error(), "not_sampled"):
		return fmt.Errorf("unsampled update over gRPC refused as %v, want not_sampled", err)
	case channelName == "kafka" && err != nil:
		return err
	}
	return nil
}

// roundOf returns the part of an invocation's answer about round r.
func roundOf(resp function.Response, r int64) (participant.RoundResult, bool) {
	for _, rr := range resp.Rounds {
		if rr.Round == r {
			return rr, true
		}
	}
	return participant.RoundResult{}, false
}
