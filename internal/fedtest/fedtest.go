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

// Clients runs n long-running participants with client ids "0".."n-1" on
// the channel and job base names (base.ClientID is ignored), until each
// sees the job's final model or ctx ends. The returned func waits for them
// and reports each client's error on t.
func Clients(ctx context.Context, t testing.TB, base participant.Target, n int, data *dataset.Catalog) (wait func()) {
	t.Helper()
	if data == nil {
		data = dataset.NewCatalog()
	}
	p := &participant.Participant{Data: data}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		tg := base
		tg.ClientID = strconv.Itoa(i)
		wg.Go(func() {
			if err := p.Follow(ctx, participant.Transport{}, tg, participant.FollowOptions{RoundTimeout: time.Minute}); err != nil {
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
