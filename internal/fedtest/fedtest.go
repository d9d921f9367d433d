// Package fedtest starts the clients of a test federation: long-running
// participants following a job to its final model, as the aggregator's
// tests in several packages need them.
package fedtest

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/participant"
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
