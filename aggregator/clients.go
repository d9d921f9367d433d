package main

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/fdxkafka/fdxkafka/function"
)

// runLocalClients runs c.clients long-running participants in this process,
// each through the same code as the Cloud Function, so one command shows a
// whole federation.
func runLocalClients(ctx context.Context, c *config, addr string, log *slog.Logger) error {
	channel := "kafka"
	if c.GRPC {
		channel = "grpc"
	}
	srv := function.NewServer(function.Config{Logger: log, Data: c.Data})
	var wg sync.WaitGroup
	errs := make([]error, c.clients)
	for i := range c.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, err := function.ParseRequest(function.RequestJSON(addr, strconv.Itoa(i), channel, c.Job, (10*time.Minute).Seconds()), function.Defaults{})
			if err != nil {
				errs[i] = err
				return
			}
			errs[i] = function.Follow(ctx, srv, req, log)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
