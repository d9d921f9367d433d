package coordinator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/round"
	"github.com/fdxkafka/fdxkafka/aggregator/strategy"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/model"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// The tests run logistic regression on 4 inputs and 3 classes: tensors
// fc0.weight [3,4] and fc0.bias [3], initialised to zero.
const (
	testJob     = "hostile"
	testInDim   = 4
	testClasses = 3
	testMaxNorm = 5
	testMaxEx   = 1000
	testMaxSize = 4096
	// testWait bounds every wait of a test on the coordinator.
	testWait = 20 * time.Second
)

// fakeServer is an in-memory channel.Server: the test queues deliveries on
// updates, Next hands them to the round loop in order.
type fakeServer struct {
	updates chan channel.Delivery
	// expired receives (without blocking) each time Next gives up because
	// the round loop's deadline passed.
	expired chan struct{}
	// late counts calls of Next with a context already done: a round loop
	// that makes them spins on a deadline that has passed.
	late atomic.Int64

	// publishes receives every published model (without blocking).
	publishes chan *fdxv1.GlobalModel

	mu        sync.Mutex
	published []*fdxv1.GlobalModel
}

func newFakeServer() *fakeServer {
	return &fakeServer{updates: make(chan channel.Delivery, 64), expired: make(chan struct{}, 1),
		publishes: make(chan *fdxv1.GlobalModel, 16)}
}

func (s *fakeServer) Latest(context.Context, func(*fdxv1.GlobalModel) error) (*fdxv1.GlobalModel, error) {
	return nil, nil
}

func (s *fakeServer) Next(ctx context.Context) (channel.Delivery, error) {
	if ctx.Err() != nil {
		s.late.Add(1)
	}
	select {
	case d := <-s.updates:
		return d, nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			select {
			case s.expired <- struct{}{}:
			default:
			}
		}
		return channel.Delivery{}, ctx.Err()
	}
}

func (s *fakeServer) Publish(_ context.Context, m *fdxv1.GlobalModel) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.published = append(s.published, proto.Clone(m).(*fdxv1.GlobalModel))
	select {
	case s.publishes <- proto.Clone(m).(*fdxv1.GlobalModel):
	default:
	}
	return nil
}

func (s *fakeServer) Stats() channel.Stats { return channel.Stats{} }
func (s *fakeServer) Close() error         { return nil }

func (s *fakeServer) models() []*fdxv1.GlobalModel {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.published)
}

// verdict is what the round loop answered a delivery.
type verdict struct {
	calls    int
	accepted bool
	reason   string
}

// replies records the verdict of every delivery, by delivery name.
type replies struct {
	mu sync.Mutex
	m  map[string]*verdict
}

func newReplies() *replies { return &replies{m: map[string]*verdict{}} }

func (r *replies) get(name string) verdict {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v, ok := r.m[name]; ok {
		return *v
	}
	return verdict{}
}

// deliver wraps u (nil for an undecodable record) as a delivery of size
// bytes (the encoded size if size is 0) whose reply is recorded as name.
func (r *replies) deliver(name string, u *fdxv1.Update, size int) channel.Delivery {
	return r.deliverStoring(name, u, size, nil)
}

// deliverStoring is deliver with a channel store: accept runs where a
// durable channel would append to its log.
func (r *replies) deliverStoring(name string, u *fdxv1.Update, size int, accept func() error) channel.Delivery {
	if size == 0 {
		size = proto.Size(u)
	}
	return channel.NewDelivery(u, size, accept, func(rej *rules.Rejection) {
		r.mu.Lock()
		defer r.mu.Unlock()
		v, ok := r.m[name]
		if !ok {
			v = &verdict{}
			r.m[name] = v
		}
		v.calls++
		v.accepted, v.reason = rej == nil, ""
		if rej != nil {
			v.reason = rej.Error()
		}
	})
}

func testSpecs(t *testing.T) []tensor.Spec {
	t.Helper()
	specs, err := model.SpecsFor(model.KindLogReg, testInDim, testClasses)
	if err != nil {
		t.Fatal(err)
	}
	return specs
}

// localParams returns deterministic, distinct weights for client k, with a
// norm well below testMaxNorm.
func localParams(specs []tensor.Spec, k int) [][]float32 {
	p := make([][]float32, len(specs))
	for i, sp := range specs {
		p[i] = make([]float32, sp.Size())
		for j := range p[i] {
			p[i][j] = float32(math.Sin(float64(97*k+13*i+j))) / 4
		}
	}
	return p
}

// filled returns params of the specs' sizes with every value v.
func filled(specs []tensor.Spec, v float32) [][]float32 {
	p := make([][]float32, len(specs))
	for i, sp := range specs {
		p[i] = make([]float32, sp.Size())
		for j := range p[i] {
			p[i][j] = v
		}
	}
	return p
}

func newUpdate(specs []tensor.Spec, client string, round, examples int64, params [][]float32) *fdxv1.Update {
	return &fdxv1.Update{
		Job: testJob, ClientId: client, BaseRound: round, NumExamples: examples,
		Params: tensor.Encode(params, specs),
	}
}

func testConfig(minClients int) coordinator.Config {
	return coordinator.Config{Job: round.Job{
		ID: testJob, NumRounds: 1, MinClients: minClients,
		Train: &fdxv1.TrainConfig{Model: model.KindLogReg, Seed: 1},
		InDim: testInDim, Classes: testClasses,
		MaxNorm: testMaxNorm, MaxExamples: testMaxEx, MaxUpdateBytes: testMaxSize,
	}}
}

func newCoordinator(t *testing.T, cfg coordinator.Config, srv channel.Server, log *slog.Logger) *coordinator.Coordinator {
	t.Helper()
	return newCoordinatorWith(t, strategy.Config{Name: "fedavg"}, cfg, srv, log)
}

func newCoordinatorWith(t *testing.T, sc strategy.Config, cfg coordinator.Config, srv channel.Server, log *slog.Logger) *coordinator.Coordinator {
	t.Helper()
	strat, err := strategy.New(sc)
	if err != nil {
		t.Fatal(err)
	}
	c, err := coordinator.New(cfg, srv, strat, nil, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fedAvg aggregates ups from the zero model the way the coordinator should.
func fedAvg(t *testing.T, specs []tensor.Spec, ups []*fdxv1.Update) [][]float32 {
	t.Helper()
	strat, err := strategy.New(strategy.Config{Name: "fedavg"})
	if err != nil {
		t.Fatal(err)
	}
	round, err := strat.Begin(filled(specs, 0))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range ups {
		vals, err := tensor.Decode(u.GetParams(), specs)
		if err != nil {
			t.Fatal(err)
		}
		if err := round.Add(strategy.Update{ClientID: u.GetClientId(), NumExamples: u.GetNumExamples(), Params: vals}); err != nil {
			t.Fatal(err)
		}
	}
	out, err := round.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func bitsEqual(a, b [][]float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if len(a[i]) != len(b[i]) {
			return false
		}
		for j := range a[i] {
			if math.Float32bits(a[i][j]) != math.Float32bits(b[i][j]) {
				return false
			}
		}
	}
	return true
}

// rejectionLogs returns, per reason, the client ids of the "update
// rejected" lines in a JSON log.
func rejectionLogs(t *testing.T, log []byte) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for line := range bytes.Lines(log) {
		var rec struct {
			Msg      string `json:"msg"`
			Reason   string `json:"reason"`
			ClientID string `json:"client_id"`
		}
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec.Msg == "update rejected" {
			out[rec.Reason] = append(out[rec.Reason], rec.ClientID)
		}
	}
	return out
}

// TestHostileRound feeds one round every kind of bad delivery, interleaved
// with three valid updates, and checks that exactly the valid ones make the
// model and every bad one is rejected, answered and logged with its reason.
func TestHostileRound(t *testing.T) {
	specs := testSpecs(t)
	good := []*fdxv1.Update{
		newUpdate(specs, "alice", 1, 10, localParams(specs, 1)),
		newUpdate(specs, "bob", 1, 25, localParams(specs, 2)),
		newUpdate(specs, "carol", 1, 7, localParams(specs, 3)),
	}
	// modified returns a copy of alice's update changed by f.
	modified := func(client string, f func(u *fdxv1.Update)) *fdxv1.Update {
		u := proto.Clone(good[0]).(*fdxv1.Update)
		u.ClientId = client
		f(u)
		return u
	}
	withParams := func(client string, params [][]float32) *fdxv1.Update {
		return modified(client, func(u *fdxv1.Update) { u.Params = tensor.Encode(params, specs) })
	}
	nanParams := localParams(specs, 4)
	nanParams[1][2] = float32(math.NaN())
	infParams := localParams(specs, 5)
	infParams[0][7] = float32(math.Inf(1))
	transposed := []tensor.Spec{{Name: specs[0].Name, Shape: []int64{testInDim, testClasses}}, specs[1]}

	rep := newReplies()
	type delivery struct {
		name string
		d    channel.Delivery
		want rules.Reason // "" for accepted
	}
	undecodable := rep.deliver("undecodable", nil, 17)
	undecodable.Err = errors.New("proto: cannot parse invalid wire-format data")
	undecodable.Key = "mallory"
	deliveries := []delivery{
		{"undecodable", undecodable, rules.Undecodable},
		{"wrong job", rep.deliver("wrong job", modified("m1", func(u *fdxv1.Update) { u.Job = "other" }), 0), rules.WrongJob},
		{"alice", rep.deliver("alice", good[0], 0), ""},
		{"wrong names", rep.deliver("wrong names", modified("m2", func(u *fdxv1.Update) {
			u.Params[0].Name, u.Params[1].Name = "fc0.bias", "fc0.weight"
		}), 0), rules.WrongShape},
		{"wrong shapes", rep.deliver("wrong shapes", modified("m3", func(u *fdxv1.Update) {
			u.Params = tensor.Encode(localParams(transposed, 3), transposed)
		}), 0), rules.WrongShape},
		{"NaN", rep.deliver("NaN", withParams("m4", nanParams), 0), rules.NonFinite},
		{"+Inf", rep.deliver("+Inf", withParams("m5", infParams), 0), rules.NonFinite},
		{"duplicate", rep.deliver("duplicate", newUpdate(specs, "alice", 1, 10, localParams(specs, 9)), 0), rules.Duplicate},
		{"norm over bound", rep.deliver("norm over bound", withParams("m6", filled(specs, 2)), 0), rules.NormBound},
		{"zero examples", rep.deliver("zero examples", modified("m7", func(u *fdxv1.Update) { u.NumExamples = 0 }), 0), rules.BadNumExamples},
		{"negative examples", rep.deliver("negative examples", modified("m8", func(u *fdxv1.Update) { u.NumExamples = -5 }), 0), rules.BadNumExamples},
		{"bob", rep.deliver("bob", good[1], 0), ""},
		{"absurd examples", rep.deliver("absurd examples", modified("m9", func(u *fdxv1.Update) { u.NumExamples = 1 << 40 }), 0), rules.BadNumExamples},
		{"stale round", rep.deliver("stale round", modified("m10", func(u *fdxv1.Update) { u.BaseRound = 0 }), 0), rules.StaleRound},
		{"future round", rep.deliver("future round", modified("m11", func(u *fdxv1.Update) { u.BaseRound = 2 }), 0), rules.FutureRound},
		{"oversize", rep.deliver("oversize", modified("m12", func(*fdxv1.Update) {}), testMaxSize+1), rules.Oversize},
		{"empty client id", rep.deliver("empty client id", modified("", func(*fdxv1.Update) {}), 0), rules.BadClientID},
		{"carol", rep.deliver("carol", good[2], 0), ""},
	}
	srv := newFakeServer()
	for _, d := range deliveries {
		srv.updates <- d.d
	}

	var logBuf bytes.Buffer
	c := newCoordinator(t, testConfig(3), srv, slog.New(slog.NewJSONHandler(&logBuf, nil)))
	ctx, cancel := context.WithTimeout(t.Context(), testWait)
	defer cancel()
	res, err := c.Run(ctx)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}

	if len(res.Rounds) != 1 || res.Final.GetRound() != 2 || !res.Final.GetFinal() {
		t.Fatalf("got %d rounds and final model of round %d (final %v); want 1 round and a final model of round 2",
			len(res.Rounds), res.Final.GetRound(), res.Final.GetFinal())
	}
	if got := len(srv.updates); got != 0 {
		t.Errorf("%d deliveries left unread; the round should have read them all", got)
	}

	got, err := tensor.Decode(res.Final.GetParams(), specs)
	if err != nil {
		t.Fatalf("final model: %v", err)
	}
	if want := fedAvg(t, specs, good); !bitsEqual(got, want) {
		t.Errorf("final model is not the FedAvg of the 3 valid updates:\ngot  %v\nwant %v", got, want)
	}
	if pub := srv.models(); len(pub) != 2 || !proto.Equal(pub[1], res.Final) {
		t.Errorf("published %d models; want the initial and the final one", len(pub))
	}

	wantContrib := []string{"alice", "bob", "carol"}
	if rec := res.Rounds[0]; !slices.Equal(rec.Contributors, wantContrib) || rec.Clients != 3 || rec.Examples != 42 {
		t.Errorf("round record: contributors %q, clients %d, examples %d; want %q, 3, 42",
			rec.Contributors, rec.Clients, rec.Examples, wantContrib)
	}
	if got := res.Final.GetContributors(); !slices.Equal(got, wantContrib) {
		t.Errorf("final model contributors %q, want %q", got, wantContrib)
	}

	wantRejected := map[string]int64{}
	for _, d := range deliveries {
		if d.want != "" {
			wantRejected[string(d.want)]++
		}
	}
	if !maps.Equal(res.Rejected, wantRejected) {
		t.Errorf("Result.Rejected = %v, want %v", res.Rejected, wantRejected)
	}
	if !maps.Equal(res.Rounds[0].Rejected, wantRejected) {
		t.Errorf("round 1 Rejected = %v, want %v", res.Rounds[0].Rejected, wantRejected)
	}
	for _, r := range slices.Sorted(maps.Keys(res.Rejected)) {
		t.Logf("rejected %-16s %d", r, res.Rejected[r])
	}

	for _, d := range deliveries {
		v := rep.get(d.name)
		switch {
		case v.calls != 1:
			t.Errorf("%s: answered %d times, want once", d.name, v.calls)
		case d.want == "" && (!v.accepted || v.reason != ""):
			t.Errorf("%s: Reply(%v, %q), want Reply(true, \"\")", d.name, v.accepted, v.reason)
		case d.want != "" && (v.accepted || !strings.HasPrefix(v.reason, string(d.want)+": ")):
			t.Errorf("%s: Reply(%v, %q), want Reply(false, %q...)", d.name, v.accepted, v.reason, d.want)
		}
	}

	// Each rejection is logged once, with the client id it claimed (or the
	// record key when the record did not decode).
	wantLogged := map[string][]string{}
	for _, d := range deliveries {
		if d.want == "" {
			continue
		}
		id := d.d.Key
		if d.d.Update != nil {
			id = d.d.Update.GetClientId()
		}
		wantLogged[string(d.want)] = append(wantLogged[string(d.want)], id)
	}
	if got := rejectionLogs(t, logBuf.Bytes()); !maps.EqualFunc(got, wantLogged, slices.Equal) {
		t.Errorf("rejections logged (reason: client ids) %v, want %v", got, wantLogged)
	}
}

// TestOutOfRangeUpdatesWithoutBounds checks that, with no norm bound and no
// example cap configured, an update whose values times its example count
// leave the aggregator's exact range is rejected, not fatal to the job.
func TestOutOfRangeUpdatesWithoutBounds(t *testing.T) {
	specs := testSpecs(t)
	good := []*fdxv1.Update{
		newUpdate(specs, "alice", 1, 10, localParams(specs, 1)),
		newUpdate(specs, "bob", 1, 25, localParams(specs, 2)),
	}
	rep := newReplies()
	srv := newFakeServer()
	srv.updates <- rep.deliver("huge values", newUpdate(specs, "m1", 1, 1, filled(specs, 1e30)), 0)
	srv.updates <- rep.deliver("alice", good[0], 0)
	srv.updates <- rep.deliver("huge count", newUpdate(specs, "m2", 1, 1<<40, localParams(specs, 3)), 0)
	srv.updates <- rep.deliver("bob", good[1], 0)

	cfg := testConfig(2)
	cfg.MaxNorm, cfg.MaxExamples = 0, 0
	ctx, cancel := context.WithTimeout(t.Context(), testWait)
	defer cancel()
	res, err := newCoordinator(t, cfg, srv, nil).Run(ctx)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	got, err := tensor.Decode(res.Final.GetParams(), specs)
	if err != nil {
		t.Fatalf("final model: %v", err)
	}
	if want := fedAvg(t, specs, good); !bitsEqual(got, want) {
		t.Errorf("final model is not the FedAvg of the 2 valid updates")
	}
	want := map[string]int64{string(rules.OutOfRange): 1, string(rules.BadNumExamples): 1}
	if !maps.Equal(res.Rejected, want) {
		t.Errorf("Rejected = %v, want %v", res.Rejected, want)
	}
	for name, reason := range map[string]rules.Reason{"huge values": rules.OutOfRange, "huge count": rules.BadNumExamples} {
		if v := rep.get(name); v.calls != 1 || v.accepted || !strings.HasPrefix(v.reason, string(reason)+": ") {
			t.Errorf("%s: %d replies, last Reply(%v, %q); want one Reply(false, %q...)", name, v.calls, v.accepted, v.reason, reason)
		}
	}
}

// runAsync runs c in a goroutine; the result arrives on the channel.
func runAsync(ctx context.Context, c *coordinator.Coordinator) <-chan runResult {
	done := make(chan runResult, 1)
	go func() {
		res, err := c.Run(ctx)
		done <- runResult{res, err}
	}()
	return done
}

type runResult struct {
	res *coordinator.Result
	err error
}

func wait(t *testing.T, done <-chan runResult) runResult {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(testWait):
		t.Fatalf("Run did not return within %v", testWait)
		return runResult{}
	}
}

func TestStragglers(t *testing.T) {
	const timeout = 200 * time.Millisecond
	specs := testSpecs(t)
	ups := []*fdxv1.Update{
		newUpdate(specs, "alice", 1, 10, localParams(specs, 1)),
		newUpdate(specs, "bob", 1, 25, localParams(specs, 2)),
	}

	t.Run("deadline closes round with MinClients", func(t *testing.T) {
		srv := newFakeServer()
		rep := newReplies()
		for _, u := range ups {
			srv.updates <- rep.deliver(u.GetClientId(), u, 0)
		}
		cfg := testConfig(2)
		cfg.TargetClients, cfg.RoundTimeout = 3, timeout
		r := wait(t, runAsync(t.Context(), newCoordinator(t, cfg, srv, nil)))
		if r.err != nil {
			t.Fatalf("Run: %v", r.err)
		}
		rec := r.res.Rounds[0]
		if want := []string{"alice", "bob"}; !slices.Equal(rec.Contributors, want) {
			t.Errorf("contributors %q, want %q", rec.Contributors, want)
		}
		// The round waited for the third client until its deadline.
		if rec.DurationMs < float64(timeout.Milliseconds()) {
			t.Errorf("round closed after %.1f ms, before its %v deadline", rec.DurationMs, timeout)
		}
		got, err := tensor.Decode(r.res.Final.GetParams(), specs)
		if err != nil {
			t.Fatal(err)
		}
		if !bitsEqual(got, fedAvg(t, specs, ups)) {
			t.Errorf("final model is not the FedAvg of the 2 updates")
		}
	})

	t.Run("OnShort fail", func(t *testing.T) {
		srv := newFakeServer()
		srv.updates <- newReplies().deliver("alice", ups[0], 0)
		cfg := testConfig(2)
		cfg.RoundTimeout, cfg.OnShort = timeout, coordinator.Fail
		r := wait(t, runAsync(t.Context(), newCoordinator(t, cfg, srv, nil)))
		if r.err == nil || !strings.Contains(r.err.Error(), "deadline passed with 1 of 2") {
			t.Fatalf("Run error %v, want one saying the deadline passed with 1 of 2 updates", r.err)
		}
		if pub := srv.models(); len(pub) != 1 {
			t.Errorf("published %d models, want only the initial one", len(pub))
		}
	})

	const cfgMin = 2
	for _, target := range []int{cfgMin, cfgMin + 1} {
		t.Run(fmt.Sprintf("OnShort wait target %d", target), func(t *testing.T) {
			srv := newFakeServer()
			rep := newReplies()
			srv.updates <- rep.deliver("alice", ups[0], 0)
			cfg := testConfig(cfgMin)
			cfg.TargetClients, cfg.RoundTimeout, cfg.OnShort = target, timeout, coordinator.Wait
			ctx, cancel := context.WithTimeout(t.Context(), testWait)
			defer cancel()
			done := runAsync(ctx, newCoordinator(t, cfg, srv, nil))
			select {
			case <-srv.expired:
			case r := <-done:
				t.Fatalf("Run returned (%v) before the round deadline passed", r.err)
			case <-time.After(testWait):
				t.Fatalf("the round deadline did not pass within %v", testWait)
			}
			srv.updates <- rep.deliver("bob", ups[1], 0)
			r := wait(t, done)
			if r.err != nil {
				t.Fatalf("Run: %v", r.err)
			}
			if want := []string{"alice", "bob"}; !slices.Equal(r.res.Rounds[0].Contributors, want) {
				t.Errorf("contributors %q, want %q", r.res.Rounds[0].Contributors, want)
			}
			if v := rep.get("bob"); v.calls != 1 || !v.accepted {
				t.Errorf("late update: %d replies, accepted %v; want one acceptance", v.calls, v.accepted)
			}
		})
	}
}

// TestKrumNeedsMoreAfterDeadline: Krum tolerating one attacker needs five
// updates. The deadline passes with MinClients (2) in; the round must stay
// open, waiting without spinning, and close once five are in.
func TestKrumNeedsMoreAfterDeadline(t *testing.T) {
	specs := testSpecs(t)
	ids := []string{"a", "b", "c", "d", "e"}
	var ups []*fdxv1.Update
	for k, id := range ids {
		ups = append(ups, newUpdate(specs, id, 1, int64(10+k), localParams(specs, k)))
	}
	srv := newFakeServer()
	rep := newReplies()
	for _, u := range ups[:2] {
		srv.updates <- rep.deliver(u.GetClientId(), u, 0)
	}
	cfg := testConfig(2)
	cfg.RoundTimeout = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(t.Context(), testWait)
	defer cancel()
	done := runAsync(ctx, newCoordinatorWith(t, strategy.Config{Name: "krum", ByzantineF: 1}, cfg, srv, nil))
	select {
	case <-srv.expired:
	case r := <-done:
		t.Fatalf("Run returned (%v) before the round deadline passed", r.err)
	case <-time.After(testWait):
		t.Fatalf("the round deadline did not pass within %v", testWait)
	}
	for _, u := range ups[2:] {
		srv.updates <- rep.deliver(u.GetClientId(), u, 0)
	}
	r := wait(t, done)
	if r.err != nil {
		t.Fatalf("Run: %v", r.err)
	}
	if got := r.res.Rounds[0].Contributors; !slices.Equal(got, ids) {
		t.Errorf("contributors %q, want %q", got, ids)
	}
	if n := srv.late.Load(); n != 0 {
		t.Errorf("Next was called %d times with a deadline already passed: the round loop spins", n)
	}
}

// TestAcceptBeforeFold: an update the channel fails to store is rejected as
// not_stored and left out of the model, and its sender may send it again;
// an update is folded only after the channel accepted it, and its sender
// hears "accepted" only after both.
func TestAcceptBeforeFold(t *testing.T) {
	specs := testSpecs(t)
	alice := newUpdate(specs, "alice", 1, 10, localParams(specs, 1))
	bob := newUpdate(specs, "bob", 1, 25, localParams(specs, 2))
	rep := newReplies()
	srv := newFakeServer()
	var stored []string
	store := func(id string, fail bool) func() error {
		return func() error {
			if fail {
				return errors.New("disk full")
			}
			// The reply must not have been sent yet.
			if v := rep.get(id); v.calls != 0 {
				t.Errorf("%s answered before it was stored", id)
			}
			stored = append(stored, id)
			return nil
		}
	}
	srv.updates <- rep.deliverStoring("alice-1", alice, 0, store("alice-1", true))
	srv.updates <- rep.deliverStoring("bob", bob, 0, store("bob", false))
	srv.updates <- rep.deliverStoring("alice-2", alice, 0, store("alice-2", false))

	c := newCoordinator(t, testConfig(2), srv, nil)
	ctx, cancel := context.WithTimeout(t.Context(), testWait)
	defer cancel()
	res, err := c.Run(ctx)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if v := rep.get("alice-1"); v.accepted || !strings.HasPrefix(v.reason, string(rules.NotStored)+": ") {
		t.Errorf("alice's unstored update: Reply(%v, %q), want a not_stored rejection", v.accepted, v.reason)
	}
	for _, name := range []string{"bob", "alice-2"} {
		if v := rep.get(name); !v.accepted || v.calls != 1 {
			t.Errorf("%s: answered %d times, accepted %v; want accepted once", name, v.calls, v.accepted)
		}
	}
	if !slices.Equal(stored, []string{"bob", "alice-2"}) {
		t.Errorf("stored %q, want bob then alice's second try", stored)
	}
	if got := res.Rejected; !maps.Equal(got, map[string]int64{string(rules.NotStored): 1}) {
		t.Errorf("Rejected = %v, want one not_stored", got)
	}
	got, err := tensor.Decode(res.Final.GetParams(), specs)
	if err != nil {
		t.Fatal(err)
	}
	if want := fedAvg(t, specs, []*fdxv1.Update{alice, bob}); !bitsEqual(got, want) {
		t.Error("final model is not the FedAvg of bob and alice's stored update")
	}
}

// TestWeightDomination: a client that claims more examples than its shard
// holds, or sends an update far larger than the round's honest ones, is
// rejected; one that stays just inside both bounds moves the model by no
// more than the norm bound allows.
func TestWeightDomination(t *testing.T) {
	specs := testSpecs(t)
	const shard = 30
	cfg := testConfig(3)
	cfg.NumRounds, cfg.MaxNorm = 2, 0
	cfg.NormFactor = coordinator.DefaultNormFactor
	cfg.ExamplesOf = func(string) (int64, error) { return shard, nil }
	srv := newFakeServer()
	c := newCoordinator(t, cfg, srv, nil)
	ctx, cancel := context.WithTimeout(t.Context(), testWait)
	defer cancel()
	type outcome struct {
		res *coordinator.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() { res, err := c.Run(ctx); done <- outcome{res, err} }()
	next := func() [][]float32 {
		t.Helper()
		select {
		case m := <-srv.publishes:
			p, err := tensor.Decode(m.GetParams(), specs)
			if err != nil {
				t.Fatal(err)
			}
			return p
		case <-ctx.Done():
			t.Fatal("no model published")
			return nil
		}
	}
	// moved returns global plus scale times a fixed direction of norm 1.
	moved := func(global [][]float32, k int, scale float64) ([][]float32, float64) {
		dir := localParams(specs, k)
		var n float64
		for _, v := range dir {
			for _, x := range v {
				n += float64(x) * float64(x)
			}
		}
		n = math.Sqrt(n)
		out := make([][]float32, len(global))
		for i := range global {
			out[i] = make([]float32, len(global[i]))
			for j := range global[i] {
				out[i][j] = global[i][j] + float32(scale*float64(dir[i][j])/n)
			}
		}
		return out, distance(global, out)
	}
	rep := newReplies()
	g1 := next()
	var norms []float64
	for k, id := range []string{"alice", "bob", "carol"} {
		p, n := moved(g1, k+1, 0.1*float64(k+1)) // norms 0.1, 0.2, 0.3
		norms = append(norms, n)
		srv.updates <- rep.deliver(id+"-1", newUpdate(specs, id, 1, shard, p), 0)
	}
	g2 := next()
	median := norms[1]
	bound := coordinator.DefaultNormFactor * median
	mallory, _ := moved(g2, 7, 50*median)
	eve, eveNorm := moved(g2, 8, 0.9*bound)
	srv.updates <- rep.deliver("mallory", newUpdate(specs, "mallory", 2, shard, mallory), 0)
	srv.updates <- rep.deliver("trudy", newUpdate(specs, "trudy", 2, 10*shard, eve), 0)
	srv.updates <- rep.deliver("eve", newUpdate(specs, "eve", 2, shard, eve), 0)
	for k, id := range []string{"alice", "bob"} {
		p, _ := moved(g2, k+4, 0.1)
		srv.updates <- rep.deliver(id+"-2", newUpdate(specs, id, 2, shard, p), 0)
	}
	out := <-done
	if out.err != nil {
		t.Fatalf("Run: %v", out.err)
	}
	if want := map[string]int64{string(rules.NormBound): 1, string(rules.BadNumExamples): 1}; !maps.Equal(out.res.Rejected, want) {
		t.Errorf("rejected %v, want %v", out.res.Rejected, want)
	}
	if got := out.res.Rounds[1].Contributors; !slices.Equal(got, []string{"alice", "bob", "eve"}) {
		t.Errorf("round 2 contributors %v, want alice, bob, eve", got)
	}
	final, err := tensor.Decode(out.res.Final.GetParams(), specs)
	if err != nil {
		t.Fatal(err)
	}
	// The new model is a convex combination of accepted updates, each
	// within the bound of g2: it cannot move further than the bound.
	if d := distance(g2, final); d > bound*(1+1e-5) {
		t.Errorf("model moved %.4g in round 2, over the norm bound %.4g", d, bound)
	} else {
		t.Logf("round 1 median norm %.3g, bound %.3g; eve's update %.3g; the model moved %.3g", median, bound, eveNorm, d)
	}
}

func distance(a, b [][]float32) float64 {
	var s float64
	for i := range a {
		for j := range a[i] {
			d := float64(a[i][j]) - float64(b[i][j])
			s += d * d
		}
	}
	return math.Sqrt(s)
}
