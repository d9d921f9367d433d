package participant

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/rules"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// The channels a client can reach an aggregator through.
const (
	ChannelKafka = "kafka"
	ChannelGRPC  = "grpc"
)

// Target names one job's aggregator as one client sees it.
type Target struct {
	// Channel is ChannelKafka or ChannelGRPC.
	Channel string
	// Broker is the Kafka bootstrap list, or the gRPC aggregator's host:port.
	Broker   string
	Job      string
	ClientID string
}

// Validate checks t's fields, so that a mistake fails at once rather than
// as a dial error retried forever.
func (t Target) Validate() error {
	if t.Channel != ChannelKafka && t.Channel != ChannelGRPC {
		return fmt.Errorf("channel %q: want %q or %q", t.Channel, ChannelKafka, ChannelGRPC)
	}
	if t.Broker == "" {
		return errors.New("no broker or aggregator address")
	}
	if err := rules.ValidateJob(t.Job); err != nil {
		return err
	}
	return rules.ValidateClientID(t.ClientID)
}

// Transport holds how this process reaches aggregators: the security
// settings every dial shares.
type Transport struct {
	// KafkaProperties are Kafka client properties (SASL, TLS).
	KafkaProperties map[string]string
	// GRPCTLS, when set, dials the gRPC aggregator over TLS.
	GRPCTLS *tls.Config
	// Token is this client's token: the bearer token of its gRPC calls,
	// and on Kafka the key of the HMAC its updates carry.
	Token string
	// ModelVerifier, when set, checks the aggregator's signature on every
	// Kafka model record; unsigned or forged ones are ignored.
	ModelVerifier *trust.Verifier
	Logger        *slog.Logger
}

// HoldsCredentials reports whether a dial presents something an impostor
// could use: a client token (gRPC bearer token; on Kafka the key of the
// update MAC, open to an offline guess from a MACed update), a gRPC client
// certificate, or Kafka SASL or TLS settings (a login, a client key). A
// deployment holding any of them must dial only the brokers it was made
// for.
func (tr Transport) HoldsCredentials() bool {
	if tr.Token != "" {
		return true
	}
	if c := tr.GRPCTLS; c != nil && (len(c.Certificates) > 0 || c.GetClientCertificate != nil) {
		return true
	}
	for k, v := range tr.KafkaProperties {
		k = strings.ToLower(strings.TrimSpace(k))
		if strings.HasPrefix(k, "sasl.") || strings.HasPrefix(k, "ssl.") {
			return true
		}
		if k == "security.protocol" && !strings.EqualFold(strings.TrimSpace(v), "plaintext") {
			return true
		}
	}
	return false
}

// Dial opens the channel t names.
func (tr Transport) Dial(ctx context.Context, t Target) (channel.Client, error) {
	log := tr.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	switch t.Channel {
	case ChannelGRPC:
		return grpcchan.Dial(ctx, grpcchan.ClientOptions{Addr: t.Broker, Job: t.Job, ClientID: t.ClientID,
			TLS: tr.GRPCTLS, Token: tr.Token})
	default:
		return kafkachan.Dial(ctx, kafkachan.ClientOptions{Options: kafkachan.Options{
			Brokers: t.Broker, Job: t.Job, Properties: tr.KafkaProperties, Logger: log, Verifier: tr.ModelVerifier,
		}, Token: tr.Token})
	}
}

// FollowOptions configure Follow.
type FollowOptions struct {
	// Round is the first round to take part in (0: the current one).
	Round int64
	// RoundTimeout bounds waiting for one round's model; a timeout is not
	// an error, the client keeps waiting.
	RoundTimeout time.Duration
}

// Follow takes part in every round until the job's final model, staying
// connected between rounds and reconnecting with backoff when the transport
// fails. It is the long-running client's loop.
func (p *Participant) Follow(ctx context.Context, tr Transport, t Target, opt FollowOptions) error {
	if err := t.Validate(); err != nil {
		return err
	}
	log := p.logger().With("job", t.Job, "client_id", t.ClientID)
	const firstBackoff = 200 * time.Millisecond
	backoff := firstBackoff
	next := opt.Round
	// One error-feedback memory for the whole job, across reconnects.
	residual := new(tensor.Residual)
	for {
		ch, err := tr.Dial(ctx, t)
		if err == nil {
			before := next
			next, err = p.follow(ctx, ch, t, next, opt.RoundTimeout, residual, log)
			ch.Close()
			if err == nil {
				return nil
			}
			if next != before {
				// It worked for a while: a fresh failure starts a fresh backoff.
				backoff = firstBackoff
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
func (p *Participant) follow(ctx context.Context, ch channel.Client, t Target, next int64, timeout time.Duration, residual *tensor.Residual, log *slog.Logger) (int64, error) {
	for {
		rctx, cancel := ctx, context.CancelFunc(func() {})
		if timeout > 0 {
			rctx, cancel = context.WithTimeout(ctx, timeout)
		}
		sum, err := p.Run(rctx, ch, Options{Job: t.Job, ClientID: t.ClientID, Round: next, Rounds: 1, Residual: residual})
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
