package kafkachan

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/internal/logtest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// Attacks by anyone who can write to the job's topics (a plain broker, or a
// principal with write on the updates topic), each as a test that the
// defences stop it.

// signedJob opens a signing server of a new job, with chunkBytes (0: the
// default) for its models, and returns it with the job and the verifier.
func signedJob(t *testing.T, brokers string, chunkBytes int, tokens map[string]string) (*Server, string, *trust.Signer, *trust.Verifier) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	signer := trust.NewSigner(priv)
	verifier := trust.NewVerifier(signer.Public())
	job := kafkatest.Job(t)
	s, err := NewServer(testCtx(t, 60*time.Second), ServerOptions{
		Options:      Options{Brokers: brokers, Job: job, Verifier: verifier, ChunkBytes: chunkBytes},
		TopicOptions: TopicOptions{UpdatePartitions: 2, ModelPartitions: 2},
		Signer:       signer,
		Tokens:       tokens,
	})
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, job, signer, verifier
}

func dialVerifying(t *testing.T, brokers, job string, v *trust.Verifier) *Client {
	t.Helper()
	c, err := Dial(testCtx(t, 30*time.Second), ClientOptions{Options: Options{Brokers: brokers, Job: job, Verifier: v}})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// modelRecordOf returns the committed record of the model topic that
// carries round's signature: the model record or its manifest.
func modelRecordOf(ctx context.Context, t *testing.T, brokers, job string, round int64) *kgo.Record {
	t.Helper()
	for _, r := range readPartition(ctx, t, brokers, ModelTopic(job), 0, true) {
		if string(header(r, trust.HeaderRound)) == fmt.Sprint(round) && header(r, trust.HeaderSignature) != nil {
			return r
		}
	}
	t.Fatalf("no signed record of round %d on %s", round, ModelTopic(job))
	return nil
}

// copyRecord is r as a raw producer writes it again on partition 0, with
// headers changed by edit (when set).
func copyRecord(r *kgo.Record, edit func(h []kgo.RecordHeader) []kgo.RecordHeader) *kgo.Record {
	h := append([]kgo.RecordHeader(nil), r.Headers...)
	if edit != nil {
		h = edit(h)
	}
	return &kgo.Record{Topic: r.Topic, Partition: 0, Key: r.Key, Value: r.Value, Headers: h}
}

func setHeader(h []kgo.RecordHeader, key string, v []byte) []kgo.RecordHeader {
	for i := range h {
		if h[i].Key == key {
			h[i].Value = v
			return h
		}
	}
	return append(h, kgo.RecordHeader{Key: key, Value: v})
}

// TestRollbackReplayRefused replays genuine, correctly signed old models on
// top of the model topic after round 5, as an attacker on a plain broker
// can: the round-2 record twelve times (more than any window a reader reads
// first), the round-2 record relabelled as round 6 and as final, and the
// round-2 value under round 5's signature and headers. A restarting
// aggregator, a running client and a new client all still take round 5,
// the running client counts what it refused, and the next genuine model is
// read as usual. Models as whole records and as chunks spread over
// partitions.
func TestRollbackReplayRefused(t *testing.T) {
	for _, tc := range []struct {
		name       string
		chunkBytes int
	}{{"record", 0}, {"chunked", 256}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t, 2*time.Minute)
			brokers := kafkatest.Brokers(t)
			s, job, _, verifier := signedJob(t, brokers, tc.chunkBytes, nil)
			published := map[int64]*fdxv1.GlobalModel{}
			for r := int64(1); r <= 5; r++ {
				m := model(job, r, 100)
				published[r] = m
				if err := s.Publish(ctx, m); err != nil {
					t.Fatalf("publish round %d: %v", r, err)
				}
			}
			running := dialVerifying(t, brokers, job, verifier)
			if m, err := running.Model(ctx, 5); err != nil || m.GetRound() != 5 {
				t.Fatalf("running client before the attack: round %d, %v", m.GetRound(), err)
			}

			old := modelRecordOf(ctx, t, brokers, job, 2)
			five := modelRecordOf(ctx, t, brokers, job, 5)
			var attack []*kgo.Record
			for range 12 {
				attack = append(attack, copyRecord(old, nil))
			}
			attack = append(attack,
				copyRecord(old, func(h []kgo.RecordHeader) []kgo.RecordHeader { return setHeader(h, trust.HeaderRound, []byte("6")) }),
				copyRecord(old, func(h []kgo.RecordHeader) []kgo.RecordHeader { return setHeader(h, trust.HeaderFinal, []byte("1")) }),
				&kgo.Record{Topic: old.Topic, Partition: 0, Key: five.Key, Value: old.Value, Headers: five.Headers},
			)
			rawProduce(ctx, t, brokers, attack)

			// The aggregator restarts (fencing the first).
			s2, err := NewServer(ctx, ServerOptions{
				Options:      Options{Brokers: brokers, Job: job, Verifier: verifier, ChunkBytes: tc.chunkBytes},
				TopicOptions: TopicOptions{UpdatePartitions: 2, ModelPartitions: 2},
				Signer:       s.opt.Signer,
			})
			if err != nil {
				t.Fatalf("restart: %v", err)
			}
			defer s2.Close()
			restored, err := s2.Latest(ctx, nil)
			if err != nil || restored.GetRound() != 5 || !proto.Equal(restored, published[5]) {
				t.Fatalf("restarted aggregator resumed from round %d (%v), want the genuine round 5", restored.GetRound(), err)
			}

			if m, err := running.Model(ctx, 0); err != nil || m.GetRound() != 5 {
				t.Errorf("running client after the replay: round %d, %v; want 5", m.GetRound(), err)
			}
			if n := running.Stats().RecordsRejected; n < int64(len(attack)) {
				t.Errorf("running client rejected %d records, want at least the %d replayed", n, len(attack))
			}
			fresh := dialVerifying(t, brokers, job, verifier)
			if m, err := fresh.Model(ctx, 0); err != nil || !proto.Equal(m, published[5]) {
				t.Errorf("new client after the replay: round %d, %v; want the genuine round 5", m.GetRound(), err)
			}

			next := model(job, 6, 100)
			if err := s2.Publish(ctx, next); err != nil {
				t.Fatalf("publish round 6: %v", err)
			}
			for name, c := range map[string]*Client{"running": running, "new": fresh} {
				if m, err := c.Model(ctx, 6); err != nil || !proto.Equal(m, next) {
					t.Errorf("%s client: round %d, %v; want the genuine round 6", name, m.GetRound(), err)
				}
			}
		})
	}
}

// TestModelConflictAlarm: a second model of round 3, signed with the
// job's own key (a stolen key) and appended after it, is counted as a
// conflict, and readers keep the model that came first.
func TestModelConflictAlarm(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	brokers := kafkatest.Brokers(t)
	s, job, signer, verifier := signedJob(t, brokers, 0, nil)
	var genuine *fdxv1.GlobalModel
	for r := int64(1); r <= 3; r++ {
		genuine = model(job, r, 50)
		if err := s.Publish(ctx, genuine); err != nil {
			t.Fatal(err)
		}
	}
	evil := model(job, 3, 50)
	evil.Params[0].Data[0] ^= 1
	value, err := proto.Marshal(evil)
	if err != nil {
		t.Fatal(err)
	}
	claims := trust.ModelClaims{Job: job, Topic: ModelTopic(job), Round: 3}
	round, final := claims.Headers()
	rawProduce(ctx, t, brokers, []*kgo.Record{{Topic: ModelTopic(job), Partition: 0, Value: value, Headers: []kgo.RecordHeader{
		{Key: trust.HeaderRound, Value: round}, {Key: trust.HeaderFinal, Value: final},
		{Key: trust.HeaderSignature, Value: signer.SignModel(claims, value)}, {Key: trust.HeaderKeyID, Value: []byte(signer.KeyID())},
	}}})
	got, err := s.Latest(ctx, nil)
	if err != nil || !proto.Equal(got, genuine) {
		t.Errorf("Latest = round %d, %v; want the first round 3", got.GetRound(), err)
	}
	if n := s.Stats().ModelConflicts; n != 1 {
		t.Errorf("server counted %d conflicts, want 1", n)
	}
	c := dialVerifying(t, brokers, job, verifier)
	if m, err := c.Model(ctx, 0); err != nil || !proto.Equal(m, genuine) {
		t.Errorf("client read round %d, %v; want the first round 3", m.GetRound(), err)
	}
	if n := c.Stats().ModelConflicts; n != 1 {
		t.Errorf("client counted %d conflicts, want 1", n)
	}
}

// TestWarmClientSeesFinal: a client that read round 3 and is used again
// (a warm function instance) once a new client reads the job's final
// model reads the final model too, not the round it read before.
func TestWarmClientSeesFinal(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	brokers := kafkatest.Brokers(t)
	s, job, _, verifier := signedJob(t, brokers, 0, nil)
	for r := int64(1); r <= 3; r++ {
		if err := s.Publish(ctx, model(job, r, 10)); err != nil {
			t.Fatal(err)
		}
	}
	warm := dialVerifying(t, brokers, job, verifier)
	if m, err := warm.Model(ctx, 0); err != nil || m.GetRound() != 3 {
		t.Fatalf("first use: round %d, %v", m.GetRound(), err)
	}
	last := model(job, 4, 10)
	last.Final = true
	if err := s.Publish(ctx, last); err != nil {
		t.Fatal(err)
	}
	// A commit's markers reach the partition shortly after the commit
	// returns: wait until a new client reads the final model, then the
	// warm one must read it too.
	for {
		cold, err := Dial(ctx, ClientOptions{Options: Options{Brokers: brokers, Job: job, Verifier: verifier}})
		if err != nil {
			t.Fatal(err)
		}
		m, err := cold.Model(ctx, 0)
		cold.Close()
		if err != nil {
			t.Fatalf("new client: %v", err)
		}
		if m.GetFinal() {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no new client read the final model: %v", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	m, err := warm.Model(ctx, 0)
	if err != nil || m.GetRound() != 4 || !m.GetFinal() {
		t.Fatalf("warm client after the final model: round %d final %v, %v; want round 4, final", m.GetRound(), m.GetFinal(), err)
	}
}

// TestChunkHijackRefused: while a client's chunked update is in progress,
// another principal writes chunks keyed by the victim's id: unsigned, with
// a MAC under the attacker's own token, and genuine chunks of the victim's
// earlier transfer replayed, plus a manifest under the attacker's token.
// The victim's update arrives intact, every forged chunk is counted, and
// the flood writes one warning line, not one per chunk.
func TestChunkHijackRefused(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	brokers := kafkatest.Brokers(t)
	var logBuf logtest.SyncBuffer
	tokens := map[string]string{"victim": "victim-token", "attacker": "attacker-token"}
	job := kafkatest.Job(t)
	s, err := NewServer(ctx, ServerOptions{
		Options:      Options{Brokers: brokers, Job: job, ChunkBytes: 128, Logger: slog.New(slog.NewJSONHandler(&logBuf, nil))},
		TopicOptions: TopicOptions{UpdatePartitions: 1},
		Tokens:       tokens,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Publish(ctx, model(job, 1, 10)); err != nil {
		t.Fatal(err)
	}
	dialAs := func(token string) *Client {
		c, err := Dial(ctx, ClientOptions{Options: Options{Brokers: brokers, Job: job, ChunkBytes: 128}, Token: token})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	victim, attacker := dialAs(tokens["victim"]), dialAs(tokens["attacker"])
	update := func(round int64) *fdxv1.Update {
		return &fdxv1.Update{Job: job, ClientId: "victim", BaseRound: round, NumExamples: 7,
			Params: model(job, round, 200).GetParams()}
	}
	// An earlier genuine transfer of the victim, delivered.
	first, err := proto.Marshal(update(1))
	if err != nil {
		t.Fatal(err)
	}
	oldChunks, oldLast, err := victim.updateRecords("victim", first)
	if err != nil || len(oldChunks) < 3 {
		t.Fatalf("want a chunked update: %d chunks, %v", len(oldChunks), err)
	}
	rawProduce(ctx, t, brokers, append(oldChunks, oldLast))
	d, err := s.Next(ctx)
	if err != nil || d.Rejection != nil || d.Update.GetBaseRound() != 1 {
		t.Fatalf("the earlier update: %+v, %v", d.Rejection, err)
	}

	second := update(2)
	b, err := proto.Marshal(second)
	if err != nil {
		t.Fatal(err)
	}
	chunks, last, err := victim.updateRecords("victim", b)
	if err != nil {
		t.Fatal(err)
	}
	forged := func(mac func(id string, i int, v []byte) []byte) []*kgo.Record {
		evil, err := proto.Marshal(&fdxv1.Update{Job: job, ClientId: "victim", BaseRound: 2, NumExamples: 1 << 20, Params: model(job, 50, 200).GetParams()})
		if err != nil {
			t.Fatal(err)
		}
		ec, _, err := transferRecords(UpdatesTopic(job), byKey, []byte("victim"), evil, 128)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range ec {
			if mac != nil {
				c.Headers = append(c.Headers, kgo.RecordHeader{Key: trust.HeaderMAC, Value: mac(string(header(c, headerTransfer)), i, c.Value)})
			}
		}
		return ec
	}
	var attack []*kgo.Record
	for range 20 {
		attack = append(attack, forged(nil)[0])
		attack = append(attack, forged(func(id string, i int, v []byte) []byte { return trust.ChunkMAC(tokens["attacker"], id, i, v) })[1])
	}
	for _, c := range oldChunks {
		attack = append(attack, &kgo.Record{Topic: c.Topic, Partition: byKey, Key: c.Key, Value: c.Value, Headers: c.Headers})
	}
	// A manifest keyed by the victim under the attacker's token.
	_, fakeLast, err := attacker.updateRecords("victim", b)
	if err != nil {
		t.Fatal(err)
	}
	attack = append(attack, fakeLast)

	// Victim's first chunk, the attack, the victim's other chunks, the
	// attack again, the victim's manifest.
	recs := append([]*kgo.Record{chunks[0]}, attack...)
	recs = append(recs, chunks[1:]...)
	recs = append(recs, attack...)
	rawProduce(ctx, t, brokers, append(recs, last))

	var got *fdxv1.Update
	for got == nil {
		d, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for the victim's update: %v", err)
		}
		if d.Rejection != nil {
			// The forged manifests, refused as unauthenticated.
			if !strings.HasPrefix(string(d.Rejection.Reason), "unauthenticated") {
				t.Fatalf("delivery rejected %v, want only the forged manifests, as unauthenticated", d.Rejection)
			}
			continue
		}
		got = d.Update
	}
	if !proto.Equal(got, second) {
		t.Fatalf("delivered update differs from the victim's")
	}
	if n, want := s.Stats().RecordsRejected, int64(2*40); n < want {
		t.Errorf("%d records rejected, want at least the %d forged chunks", n, want)
	}
	if n := strings.Count(logBuf.String(), `"update chunk refused"`); n != 1 {
		t.Errorf("%d warning lines about refused chunks, want 1 (rate-limited)", n)
	}
}
