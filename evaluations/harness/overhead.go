package harness

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"time"

	"github.com/fdxkafka/fdxkafka/client/dialcache"
	"github.com/fdxkafka/fdxkafka/client/participant"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/embedded"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// OverheadReport is one channel's invocation overhead: everything a
// function invocation spends on the transport, training excluded. Times are
// medians (and 90th percentiles) over Invocations invocations.
type OverheadReport struct {
	Channel     string `json:"channel"`
	GOMAXPROCS  int    `json:"gomaxprocs"`
	Invocations int    `json:"invocations"`
	// Cold: dial, first model, submit, up to where the function can
	// answer; the close that follows is CloseMs, after the answer.
	ColdMs    float64 `json:"cold_ms"`
	ColdP90Ms float64 `json:"cold_p90_ms"`
	DialMs    float64 `json:"cold_dial_ms"`
	ModelMs   float64 `json:"cold_model_ms"`
	SubmitMs  float64 `json:"cold_submit_ms"`
	CloseMs   float64 `json:"cold_close_ms"`
	// Warm: a cached client (dialcache: lease and health check), the
	// round's model, submit.
	WarmMs       float64 `json:"warm_ms"`
	WarmP90Ms    float64 `json:"warm_p90_ms"`
	WarmModelMs  float64 `json:"warm_model_ms"`
	WarmSubmitMs float64 `json:"warm_submit_ms"`
}

// overheadParams is the size of the models and updates the probe moves:
// the logistic regression on MNIST (784×10 weights and 10 biases).
const overheadParams = 7850

// Overhead measures cold and warm invocation overhead per channel, with
// the runtime's GOMAXPROCS and again with GOMAXPROCS=1,
// the share a 1-vCPU Cloud Function instance gets. Before every
// invocation the aggregator side publishes a new round, so that a warm
// client, too, must receive a model it has not seen. The aggregator side
// (and an embedded broker) share the process, as in the stress runs.
func Overhead(ctx context.Context, cfg Config) ([]OverheadReport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var out []OverheadReport
	for _, ch := range []string{Kafka, GRPC} {
		for _, one := range []bool{false, true} {
			r, err := overheadRun(ctx, cfg, ch, one)
			if err != nil {
				return nil, fmt.Errorf("%s invocation overhead: %w", ch, err)
			}
			out = append(out, r)
		}
	}
	return out, nil
}

func overheadRun(ctx context.Context, cfg Config, ch string, oneCPU bool) (OverheadReport, error) {
	job := fmt.Sprintf("%s-overhead-%s-%d", cfg.JobPrefix, ch, time.Now().UnixNano())
	var srv channel.Server
	var addr string
	switch ch {
	case Kafka:
		addr = cfg.Broker
		if addr == "" {
			b, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0"})
			if err != nil {
				return OverheadReport{}, err
			}
			defer b.Close()
			addr = b.Addr()
		}
		s, err := kafkachan.NewServer(ctx, kafkachan.ServerOptions{
			Options: kafkachan.Options{Brokers: addr, Job: job, Properties: cfg.KafkaProperties}, TopicOptions: kafkachan.TopicOptions{UpdatePartitions: 3}})
		if err != nil {
			return OverheadReport{}, err
		}
		srv = s
	case GRPC:
		s, err := grpcchan.NewServer(grpcchan.ServerOptions{Addr: "127.0.0.1:0", Job: job})
		if err != nil {
			return OverheadReport{}, err
		}
		srv, addr = s, s.Addr()
		// gRPC's SubmitUpdate waits for the aggregator's verdict.
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			for {
				d, err := s.Next(sctx)
				if err != nil {
					return
				}
				d.Reply(nil)
			}
		}()
	}
	defer srv.Close()
	n := runtime.GOMAXPROCS(0)
	if oneCPU {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
		n = 1
	}

	dialer := participant.Transport{KafkaProperties: cfg.KafkaProperties, Logger: quiet(cfg.Log, "overhead")}
	dial := func(ctx context.Context) (channel.Client, error) {
		return dialer.Dial(ctx, participant.Target{Broker: addr, ClientID: "probe", Channel: ch, Job: job})
	}
	vals := make([]float32, overheadParams)
	params := []*fdxv1.Tensor{tensor.FromFloat32("w", []int64{overheadParams}, vals)}
	round := int64(0)
	publish := func() error {
		round++
		return srv.Publish(ctx, &fdxv1.GlobalModel{Job: job, Round: round, Params: params})
	}
	invoke := func(cl channel.Client) (model, submit time.Duration, err error) {
		t0 := time.Now()
		m, err := cl.Model(ctx, round)
		if err != nil {
			return 0, 0, err
		}
		if m.GetRound() != round {
			return 0, 0, fmt.Errorf("model round %d, want %d", m.GetRound(), round)
		}
		t1 := time.Now()
		err = cl.Submit(ctx, &fdxv1.Update{Job: job, ClientId: "probe", BaseRound: round, NumExamples: 1, Params: params})
		return t1.Sub(t0), time.Since(t1), err
	}

	inv := cfg.OverheadInvocations
	var cold, dials, models, submits, closes, warm, wModels, wSubmits []float64
	for i := range inv {
		if err := publish(); err != nil {
			return OverheadReport{}, err
		}
		t0 := time.Now()
		cl, err := dial(ctx)
		if err != nil {
			return OverheadReport{}, fmt.Errorf("cold invocation %d: %w", i, err)
		}
		d := time.Since(t0)
		m, s, err := invoke(cl)
		if err != nil {
			cl.Close()
			return OverheadReport{}, fmt.Errorf("cold invocation %d: %w", i, err)
		}
		answer := time.Since(t0)
		t1 := time.Now()
		cl.Close()
		dials, models, submits = append(dials, ms(d)), append(models, ms(m)), append(submits, ms(s))
		cold, closes = append(cold, ms(answer)), append(closes, ms(time.Since(t1)))
	}

	cache := dialcache.New(dialcache.Options{})
	defer cache.Close()
	key := dialcache.Key{Channel: ch, Broker: addr, Job: job}
	for i := -1; i < inv; i++ { // invocation -1 warms the cache
		if err := publish(); err != nil {
			return OverheadReport{}, err
		}
		t0 := time.Now()
		cl, release, _, err := cache.Get(ctx, key, dial)
		if err != nil {
			return OverheadReport{}, fmt.Errorf("warm invocation %d: %w", i, err)
		}
		m, s, err := invoke(cl)
		release(err)
		if err != nil {
			return OverheadReport{}, fmt.Errorf("warm invocation %d: %w", i, err)
		}
		if i >= 0 {
			warm = append(warm, msSince(t0))
			wModels, wSubmits = append(wModels, ms(m)), append(wSubmits, ms(s))
		}
	}
	if len(cold) == 0 {
		return OverheadReport{}, errors.New("no invocations")
	}
	return OverheadReport{
		Channel: ch, GOMAXPROCS: n, Invocations: inv,
		ColdMs: quantile(cold, 0.5), ColdP90Ms: quantile(cold, 0.9),
		DialMs: quantile(dials, 0.5), ModelMs: quantile(models, 0.5), SubmitMs: quantile(submits, 0.5), CloseMs: quantile(closes, 0.5),
		WarmMs: quantile(warm, 0.5), WarmP90Ms: quantile(warm, 0.9),
		WarmModelMs: quantile(wModels, 0.5), WarmSubmitMs: quantile(wSubmits, 0.5),
	}, nil
}

// quantile returns the q-quantile of xs (nearest rank).
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}
