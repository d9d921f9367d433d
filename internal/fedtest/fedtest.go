// Package fedtest starts the clients of a test federation: long-running
// participants following a job to its final model, as the aggregator's
// tests in several packages need them, optionally slow ones (as the
// evaluations' asynchronous benchmark needs them too).
package fedtest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/client/participant"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
)

// Options configure the clients; the zero value is plain clients with a
// fresh data catalog.
type Options struct {
	// Transport is how every client dials (Kafka properties, model
	// verifier).
	Transport participant.Transport
	// Tokens, when set, gives each client id its own token.
	Tokens map[string]string
	Data   *dataset.Catalog
	// Delay, when set, makes a client slow: each of its updates is sent
	// this long after its model was fetched, as a slower device's training
	// would be. Such clients run Run in their own loop instead of Follow
	// (no reconnection), stopping at the final model.
	Delay func(clientID string) time.Duration
}

// Clients runs n long-running participants with client ids "0".."n-1" on
// the channel and job base names (base.ClientID is ignored), until each
// sees the job's final model or ctx ends. The returned func waits for them
// and reports each client's error on t.
func Clients(ctx context.Context, t testing.TB, base participant.Target, n int, opt Options) (wait func()) {
	t.Helper()
	if opt.Data == nil {
		opt.Data = dataset.NewCatalog()
	}
	p := &participant.Participant{Data: opt.Data}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		tg := base
		tg.ClientID = strconv.Itoa(i)
		tr := opt.Transport
		if tok, ok := opt.Tokens[tg.ClientID]; ok {
			tr.Token = tok
		}
		wg.Go(func() {
			if opt.Delay != nil {
				if err := FollowSlowly(ctx, p, tr, tg, opt.Delay(tg.ClientID)); err != nil {
					errs <- fmt.Errorf("client %s: %w", tg.ClientID, err)
				}
				return
			}
			if err := p.Follow(ctx, tr, tg, participant.FollowOptions{RoundTimeout: time.Minute}); err != nil {
				errs <- fmt.Errorf("client %s: %w", tg.ClientID, err)
			}
		})
	}
	return func() {
		t.Helper()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
}

// FollowSlowly takes part in every model version until the final one, as
// a client that needs delay between fetching a model and sending its
// update: its channel client's Submit waits that long first. Unlike
// participant.Follow it does not reconnect.
func FollowSlowly(ctx context.Context, p *participant.Participant, tr participant.Transport, t participant.Target, delay time.Duration) error {
	ch, err := tr.Dial(ctx, t)
	if err != nil {
		return err
	}
	defer ch.Close()
	slow := &slowClient{Client: ch, delay: delay}
	next := int64(0)
	for {
		sum, err := p.Run(ctx, slow, participant.Options{Job: t.Job, ClientID: t.ClientID, Round: next})
		switch {
		case err == nil && sum.Final:
			return nil
		case err == nil, errors.Is(err, channel.ErrRejected):
			next = sum.LastRound + 1
		default:
			return err
		}
	}
}

// slowClient delays every Submit: a device that takes longer to train.
type slowClient struct {
	channel.Client
	delay time.Duration
}

func (c *slowClient) Submit(ctx context.Context, u *fdxv1.Update) error {
	if c.delay > 0 {
		t := time.NewTimer(c.delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return c.Client.Submit(ctx, u)
}
