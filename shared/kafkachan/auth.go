package kafkachan

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// authCode classifies a Kafka error code: "authentication" for a refused
// login, "authorization" for an ACL denial, "" otherwise.
func authCode(c kafka.ErrorCode) string {
	switch c {
	case kafka.ErrAuthentication, kafka.ErrSaslAuthenticationFailed:
		return "authentication"
	case kafka.ErrTopicAuthorizationFailed, kafka.ErrGroupAuthorizationFailed, kafka.ErrClusterAuthorizationFailed,
		kafka.ErrTransactionalIDAuthorizationFailed, kafka.ErrDelegationTokenAuthorizationFailed:
		return "authorization"
	}
	return ""
}

// denied wraps a refused login or an ACL denial as channel.ErrUnauthenticated
// with a hint at the fix; it returns nil for other errors.
func denied(err error) error {
	var ke kafka.Error
	if !errors.As(err, &ke) {
		return nil
	}
	switch authCode(ke.Code()) {
	case "authentication":
		return fmt.Errorf("%w (the broker refused the SASL login: check sasl.username and sasl.password): %w", channel.ErrUnauthenticated, err)
	case "authorization":
		return fmt.Errorf("%w (no ACL allows this for the SASL user; deploy/kafka/kafka.sh acls grants a job's): %w", channel.ErrUnauthenticated, err)
	}
	return nil
}

// authWatch keeps the first authentication failure that librdkafka reports
// on a handle's event channel: a wrong password never fails a call by
// itself, librdkafka only retries the connection and says why there.
type authWatch struct{ first atomic.Pointer[kafka.Error] }

func (w *authWatch) see(ev kafka.Event) {
	if e, ok := ev.(kafka.Error); ok && authCode(e.Code()) != "" {
		w.first.CompareAndSwap(nil, &e)
	}
}

func (w *authWatch) err() error {
	if e := w.first.Load(); e != nil {
		return denied(*e)
	}
	return nil
}

// probeBrokers waits until the brokers answer a metadata request, up to
// ctx's deadline or def, and fails early once a login was refused.
func probeBrokers(ctx context.Context, p *kafka.Producer, w *authWatch, brokers string, def time.Duration) error {
	deadline := time.Now().Add(time.Duration(timeoutMs(ctx, def)) * time.Millisecond)
	for {
		step := min(500*time.Millisecond, time.Until(deadline))
		_, err := p.GetMetadata(nil, false, max(int(step/time.Millisecond), 1))
		if err == nil {
			return nil
		}
		if aerr := w.err(); aerr != nil {
			return fmt.Errorf("kafka brokers %s: %w", brokers, aerr)
		}
		if ctx.Err() != nil || !time.Now().Before(deadline) {
			return fmt.Errorf("kafka brokers %s: %w: %w", brokers, channel.ErrUnreachable, err)
		}
	}
}
