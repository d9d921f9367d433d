package job

import (
	"context"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// twiceClient delivers every update twice, as a producer without
// idempotence may after a lost acknowledgement.
type twiceClient struct{ channel.Client }

func (c twiceClient) Submit(ctx context.Context, u *fdxv1.Update) error {
	if err := c.Client.Submit(ctx, u); err != nil {
		return err
	}
	return c.Client.Submit(ctx, u)
}

// TestDuplicateDeliveryDropped is why client producers can run without
// idempotence (kafkachan.Dial): a second copy of an update reaches the
// aggregator through the broker and is rejected as a duplicate, so the
// round counts its client once.
func TestDuplicateDeliveryDropped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	data := dataset.NewCatalog()
	// One updates partition: a's copy is consumed before b's update, so
	// it lands in the open round however the broker schedules fetches.
	o := Spec{Job: kafkatest.Job(t), Rounds: RoundsSpec{MinClients: 2, NumRounds: 1},
		Data: DataSpec{Dataset: "synthetic", MaxExamples: 50, EvalExamples: 100}}
	cc := ChannelConfig{Transport: Kafka, Brokers: kafkatest.Brokers(t), UpdatePartitions: 1}
	part := &participant.Participant{Data: data}
	errs := make(chan error, 1)
	ready := func(addr string) {
		go func() {
			errs <- func() error {
				for _, id := range []string{"a", "b"} {
					ch, err := kafkachan.Dial(ctx, kafkachan.ClientOptions{Options: kafkachan.Options{Brokers: addr, Job: o.Job}})
					if err != nil {
						return err
					}
					var c channel.Client = ch
					if id == "a" {
						c = twiceClient{ch}
					}
					_, err = part.Run(ctx, c, participant.Options{Job: o.Job, ClientID: id, Round: 1})
					ch.Close()
					if err != nil {
						return err
					}
				}
				return nil
			}()
		}()
	}
	res, err := RunOn(ctx, resolve(t, o, data), cc, Env{}, ready)
	if err != nil {
		t.Fatalf("job: %v", err)
	}
	if err := <-errs; err != nil {
		t.Fatalf("clients: %v", err)
	}
	if len(res.Rounds) != 1 || res.Rounds[0].Clients != 2 {
		t.Fatalf("rounds %+v: want one round with 2 clients", res.Rounds)
	}
	if got := res.Rejected[string(rules.Duplicate)]; got != 1 {
		t.Errorf("rejected %v: want exactly 1 %s", res.Rejected, rules.Duplicate)
	}
}
