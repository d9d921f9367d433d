package main

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/client/participant"
)

// runLocalClients runs c.clients long-running participants in this process,
// each through the same code as the Cloud Function, so one command shows a
// whole federation.
func runLocalClients(ctx context.Context, c *config, addr string, log *slog.Logger) error {
	ch := participant.ChannelKafka
	if c.channel.Transport == job.GRPC {
		ch = participant.ChannelGRPC
	}
	p := &participant.Participant{Data: c.data, Log: log}
	tr := participant.Transport{KafkaProperties: c.channel.KafkaProperties, Logger: log}
	var wg sync.WaitGroup
	errs := make([]error, c.clients)
	for i := range c.clients {
		wg.Go(func() {
			t := participant.Target{Channel: ch, Broker: addr, Job: c.job.Spec().Job, ClientID: strconv.Itoa(i)}
			errs[i] = p.Follow(ctx, tr, t, participant.FollowOptions{RoundTimeout: 10 * time.Minute})
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
