// Command compression measures what compressed updates and models cost and
// save: it runs the same job (by default the FedAvg paper's 2NN on MNIST,
// 10 IID clients, 10 rounds) once per encoding over the in-process Kafka
// broker, and prints, per encoding, the bytes of one update and of one
// model record and the test accuracy after rounds 1, 5 and the last.
// float16 and int8 updates carry the delta from the global model (see
// job.TrainingSpec.UpdateEncoding); "update/model" names also set the
// model encoding (job.TrainingSpec.ModelEncoding, float32 or float16).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/internal/cli"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
)

func main() { cli.Main("compression", run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("compression", flag.ContinueOnError)
	fs.SetOutput(stderr)
	clients := fs.Int("clients", 10, "clients, all in every round")
	rounds := fs.Int("rounds", 10, "rounds")
	kind := fs.String("model", "2nn", "model kind")
	maxEx := fs.Int("max-examples", 0, "examples per client (0: the whole shard)")
	encodings := fs.String("encodings", "float32,float16,int8,topk:0.1,topk:0.01,float16/float16,int8/float16",
		"encodings to compare, in order: an update encoding, or update/model")
	seed := fs.Uint64("seed", 1, "job seed")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	data := dataset.NewCatalog()
	fmt.Fprintf(stdout, "| update / model encoding | bytes per update | vs float32 | bytes per model | vs float32 | accuracy after round 1, 5, %d | final loss |\n|---|---|---|---|---|---|---|\n", *rounds)
	var base, baseModel float64
	for _, enc := range strings.Split(*encodings, ",") {
		upd, mod, _ := strings.Cut(enc, "/")
		if mod == "" {
			mod = "float32"
		}
		spec := job.Spec{
			Job:      "compression-" + strings.ReplaceAll(upd, ":", "") + "-" + mod + "-" + strconv.FormatInt(time.Now().UnixNano(), 36),
			Seed:     *seed,
			Rounds:   job.RoundsSpec{MinClients: *clients, NumRounds: *rounds},
			Data:     job.DataSpec{MaxExamples: *maxEx, Partition: dataset.PartitionSpec{Scheme: dataset.SchemeIID, NumPartitions: *clients}},
			Training: job.TrainingSpec{Model: *kind, UpdateEncoding: upd, ModelEncoding: mod},
			Security: job.SecuritySpec{NormFactor: -1},
		}
		res, err := runJob(ctx, spec, data, *clients)
		if err != nil {
			return fmt.Errorf("%s: %w", enc, err)
		}
		updates := 0
		for _, r := range res.Rounds {
			updates += r.Clients
		}
		per := float64(res.Stats.BytesReceived) / float64(max(updates, 1))
		// The aggregator's only records are its models, one per round
		// and the initial one.
		perModel := float64(res.Stats.BytesSent) / float64(max(res.Stats.MessagesSent, 1))
		if base == 0 {
			base, baseModel = per, perModel
		}
		acc := func(r int) string {
			if r < 1 || r > len(res.Rounds) {
				return "-"
			}
			return fmt.Sprintf("%.4f", res.Rounds[r-1].Accuracy)
		}
		last := res.Rounds[len(res.Rounds)-1]
		fmt.Fprintf(stdout, "| %s / %s | %.0f | %.2f× | %.0f | %.2f× | %s, %s, %s | %.4f |\n",
			upd, mod, per, per/base, perModel, perModel/baseModel, acc(1), acc(5), acc(*rounds), last.Loss)
	}
	return nil
}

// runJob runs spec over an in-process broker with n long-running clients.
func runJob(ctx context.Context, spec job.Spec, data *dataset.Catalog, n int) (*job.Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	p := &participant.Participant{Data: data}
	ready := func(addr string) {
		for i := range n {
			t := participant.Target{Channel: participant.ChannelKafka, Broker: addr, Job: spec.Job, ClientID: strconv.Itoa(i)}
			wg.Go(func() {
				if err := p.Follow(ctx, participant.Transport{}, t, participant.FollowOptions{RoundTimeout: time.Minute}); err != nil && ctx.Err() == nil {
					errs <- err
				}
			})
		}
	}
	r, err := spec.Resolve(data)
	if err != nil {
		return nil, err
	}
	res, err := job.RunOn(ctx, r, job.ChannelConfig{Transport: job.EmbeddedKafka, Listen: "127.0.0.1:0"}, job.Env{}, ready)
	wg.Wait()
	close(errs)
	if err != nil {
		return nil, err
	}
	if err := <-errs; err != nil {
		return nil, err
	}
	if len(res.Rejected) != 0 {
		return nil, fmt.Errorf("updates rejected: %v", res.Rejected)
	}
	return res, nil
}
