package main

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/command"
	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/client/participant"
)

// runClients runs d.clients long-running participants in this process,
// each through the same code as the Cloud Function, so one command shows a
// whole federation.
func (d *demo) runClients(ctx context.Context, l command.Local) error {
	ch := participant.ChannelKafka
	if l.Transport == job.GRPC {
		ch = participant.ChannelGRPC
	}
	p := &participant.Participant{Data: l.Data, Log: l.Log}
	tr := participant.Transport{KafkaProperties: l.KafkaProperties, Logger: l.Log}
	var wg sync.WaitGroup
	errs := make([]error, d.clients)
	for i := range d.clients {
		wg.Go(func() {
			t := participant.Target{Channel: ch, Broker: l.Addr, Job: l.Job, ClientID: strconv.Itoa(i)}
			errs[i] = p.Follow(ctx, tr, t, participant.FollowOptions{RoundTimeout: 10 * time.Minute})
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
