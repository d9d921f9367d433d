package function

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/participant"
)

// Follow takes part in every round until the job's final model, staying
// connected between rounds and reconnecting with backoff when the transport
// fails. It is the long-running client's loop.
func Follow(ctx context.Context, s *Server, req Request, log *slog.Logger) error {
	backoff := 200 * time.Millisecond
	next := req.Round
	for {
		ch, err := s.Dial(ctx, req)
		if err == nil {
			before := next
			next, err = s.follow(ctx, ch, req, next, log)
			ch.Close()
			if err == nil {
				return nil
			}
			if next != before {
				// It worked for a while: a fresh failure starts a fresh backoff.
				backoff = 200 * time.Millisecond
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn("client: transport failed, reconnecting", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// follow runs rounds on one connection; it returns nil at the final model.
func (s *Server) follow(ctx context.Context, ch channel.Client, req Request, next int64, log *slog.Logger) (int64, error) {
	for {
		rctx, cancel := context.WithTimeout(ctx, req.Timeout)
		sum, err := s.part.Run(rctx, ch, participant.Options{Job: req.Job, ClientID: req.ClientID, Round: next, Rounds: 1})
		cancel()
		switch {
		case err == nil && sum.Final:
			log.Info("client: job finished", "final_round", sum.LastRound)
			return next, nil
		case err == nil:
			next = sum.LastRound + 1
		case errors.Is(err, channel.ErrRejected):
			log.Warn("client: update rejected", "err", err)
			next = sum.LastRound + 1
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			log.Info("client: no new model yet, still waiting", "round", next)
		default:
			return next, err
		}
	}
}

// RequestJSON builds a request body as the PoC's invokers sent it.
func RequestJSON(broker, clientID, channel, job string, timeoutS float64) io.Reader {
	b, _ := json.Marshal(map[string]any{"broker": broker, "client_id": clientID, "channel": channel, "job": job, "timeout_s": timeoutS})
	return bytes.NewReader(b)
}
