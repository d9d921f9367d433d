package job

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/internal/fedtest"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// produceRaw writes records straight to topic, without a transaction and
// without any key the job trusts: what anyone who can reach the broker can
// do.
func produceRaw(t *testing.T, brokers, topic string, recs ...*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("forged records not delivered: %v", err)
	}
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestForgeriesChangeNothing reproduces the attacks of someone who can
// write to the job's topics but holds none of its keys, against a job that
// signs its models and authenticates its updates:
//   - a forged final model (unsigned, and signed with the attacker's own
//     key), a forged model of chosen weights, one of round MaxInt64, and
//     an empty record, on top of the model topic while the aggregator is
//     down: the restarted aggregator resumes from its own last model, and
//     clients train on it, not on the forgeries;
//   - updates under the real clients' ids, claiming all the examples:
//     rejected as unauthenticated, so they neither close the round nor
//     weigh in it.
//
// The final model is bit-identical to an undisturbed run of the same job.
func TestForgeriesChangeNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	brokers := kafkatest.Brokers(t)
	dir := t.TempDir()
	if err := trust.GenerateKey(filepath.Join(dir, "model.key"), filepath.Join(dir, "model.pub")); err != nil {
		t.Fatal(err)
	}
	if err := trust.GenerateKey(filepath.Join(dir, "evil.key"), filepath.Join(dir, "evil.pub")); err != nil {
		t.Fatal(err)
	}
	signer, err := trust.LoadSigner(filepath.Join(dir, "model.key"))
	if err != nil {
		t.Fatal(err)
	}
	evil, err := trust.LoadSigner(filepath.Join(dir, "evil.key"))
	if err != nil {
		t.Fatal(err)
	}
	const clients, rounds = 3, 3
	tokens := map[string]string{"0": "tok-0", "1": "tok-1", "2": "tok-2"}
	data := dataset.NewCatalog()
	spec := Spec{Job: kafkatest.Job(t), Seed: 9, Rounds: RoundsSpec{MinClients: clients, NumRounds: rounds},
		Data: DataSpec{Dataset: "synthetic", MaxExamples: 60, EvalExamples: 200}}
	cc := ChannelConfig{Transport: Kafka, Brokers: brokers, Signer: signer, Tokens: tokens}
	fleet := fedtest.Options{Data: data, Tokens: tokens,
		Transport: participant.Transport{ModelVerifier: trust.NewVerifier(signer.Public())}}
	target := participant.Target{Channel: participant.ChannelKafka, Broker: brokers}

	// The reference: the same job, undisturbed.
	ref := spec
	ref.Job += "-ref"
	target.Job = ref.Job
	wait := fedtest.Clients(ctx, t, target, clients, fleet)
	want, err := RunOn(ctx, resolve(t, ref, data), cc, Env{}, nil)
	if err != nil {
		t.Fatalf("reference job: %v", err)
	}
	wait()

	// The attacked job: its aggregator publishes model 1 and is stopped
	// before any client comes.
	actx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	attacked := resolve(t, spec, data)
	go func() { _, err := RunOn(actx, attacked, cc, Env{}, nil); done <- err }()
	ko := kafkachan.Options{Brokers: brokers, Job: spec.Job}
	waitRound(ctx, t, ko, 1)
	stop()
	if err := <-done; err == nil {
		t.Fatal("stopped job returned no error")
	}

	specs := attacked.Shapes()
	big := make([][]float32, len(specs))
	for i, s := range specs {
		big[i] = make([]float32, s.Size())
		for j := range big[i] {
			big[i][j] = 50
		}
	}
	weights := tensor.Encode(big, specs)
	final := marshal(t, &fdxv1.GlobalModel{Job: spec.Job, Round: rounds + 1, Final: true, NumRounds: rounds, Params: weights})
	chosen := marshal(t, &fdxv1.GlobalModel{Job: spec.Job, Round: 2, NumRounds: rounds, Params: weights})
	sign := func(v []byte, s *trust.Signer, keyID string) []kgo.RecordHeader {
		return []kgo.RecordHeader{{Key: trust.HeaderSignature, Value: s.Sign(v)}, {Key: trust.HeaderKeyID, Value: []byte(keyID)}}
	}
	produceRaw(t, brokers, kafkachan.ModelTopic(spec.Job),
		&kgo.Record{Value: chosen, Headers: sign(chosen, evil, signer.KeyID())},
		&kgo.Record{Value: marshal(t, &fdxv1.GlobalModel{Job: spec.Job, Round: 1<<63 - 1, Params: weights})},
		&kgo.Record{Value: final, Headers: sign(final, evil, evil.KeyID())},
		&kgo.Record{Value: nil},
		&kgo.Record{Value: final},
	)
	var forged []*kgo.Record
	for id := range tokens {
		u := marshal(t, &fdxv1.Update{Job: spec.Job, ClientId: id, BaseRound: 1, NumExamples: 60, Params: weights})
		forged = append(forged,
			&kgo.Record{Key: []byte(id), Value: u},
			&kgo.Record{Key: []byte(id), Value: u, Headers: []kgo.RecordHeader{{Key: trust.HeaderMAC, Value: trust.MAC("guessed", u)}}})
	}
	produceRaw(t, brokers, kafkachan.UpdatesTopic(spec.Job), forged...)

	target.Job = spec.Job
	wait = fedtest.Clients(ctx, t, target, clients, fleet)
	got, err := RunOn(ctx, resolve(t, spec, data), cc, Env{}, nil)
	if err != nil {
		t.Fatalf("attacked job: %v", err)
	}
	wait()
	if got.Resumed != 1 {
		t.Errorf("resumed from round %d, want 1 (the aggregator's own last model)", got.Resumed)
	}
	if n := got.Rejected[string(rules.Unauthenticated)]; n != int64(len(forged)) {
		t.Errorf("rejected %v; want %d unauthenticated", got.Rejected, len(forged))
	}
	for _, r := range got.Rounds {
		if !slices.Equal(r.Contributors, []string{"0", "1", "2"}) {
			t.Errorf("round %d contributors %v", r.Round, r.Contributors)
		}
	}
	if !got.Final.GetFinal() || got.Final.GetRound() != rounds+1 {
		t.Fatalf("final model round %d final %v", got.Final.GetRound(), got.Final.GetFinal())
	}
	if g, w := Digest(got.Final), Digest(want.Final); g != w {
		t.Errorf("attacked job's final model %s differs from the undisturbed run's %s", g, w)
	}
}

// TestRestartWalksPastDamage: without a signing key, a restarted
// aggregator still restores only from a record of its job with its shapes
// and a round inside it: an empty record, a model of the wrong shape and
// one of round MaxInt64 on top of the topic are walked past (today's main
// exited 1 on the first, "restore round 0: got 0 tensors", at every
// restart). One update, sent straight to the topic, closes the round.
func TestRestartWalksPastDamage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	brokers := kafkatest.Brokers(t)
	data := dataset.NewCatalog()
	spec := Spec{Job: kafkatest.Job(t), Rounds: RoundsSpec{MinClients: 1, NumRounds: 1},
		Data: DataSpec{Dataset: "synthetic", MaxExamples: 50, EvalExamples: 100}}
	cc := ChannelConfig{Transport: Kafka, Brokers: brokers}
	actx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	first := resolve(t, spec, data)
	go func() { _, err := RunOn(actx, first, cc, Env{}, nil); done <- err }()
	waitRound(ctx, t, kafkachan.Options{Brokers: brokers, Job: spec.Job}, 1)
	stop()
	<-done
	specs := first.Shapes()
	wrong := tensor.Encode([][]float32{{1, 2, 3}}, []tensor.Spec{{Name: "fc0.weight", Shape: []int64{3}}})
	produceRaw(t, brokers, kafkachan.ModelTopic(spec.Job),
		&kgo.Record{Value: marshal(t, &fdxv1.GlobalModel{Job: spec.Job, Round: 2, NumRounds: 1, Final: true, Params: wrong})},
		&kgo.Record{Value: marshal(t, &fdxv1.GlobalModel{Job: spec.Job, Round: 1<<63 - 1})},
		&kgo.Record{Value: nil},
	)
	zeros := make([][]float32, len(specs))
	for i, sp := range specs {
		zeros[i] = make([]float32, sp.Size())
	}
	update := marshal(t, &fdxv1.Update{Job: spec.Job, ClientId: "0", BaseRound: 1, NumExamples: 10, Params: tensor.Encode(zeros, specs)})
	produceRaw(t, brokers, kafkachan.UpdatesTopic(spec.Job), &kgo.Record{Key: []byte("0"), Value: update})
	res, err := RunOn(ctx, resolve(t, spec, data), cc, Env{}, nil)
	if err != nil {
		t.Fatalf("restart over damaged records: %v", err)
	}
	if res.Resumed != 1 || len(res.Rounds) != 1 || !res.Final.GetFinal() || len(res.Final.GetParams()) != len(specs) {
		t.Errorf("resumed from %d with %d rounds (final %v, %d tensors); want round 1, 1 round, a final model of %d tensors",
			res.Resumed, len(res.Rounds), res.Final.GetFinal(), len(res.Final.GetParams()), len(specs))
	}
}
