package kafkachan

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// authKind classifies a Kafka error: "authentication" for a refused
// login, "authorization" for an ACL denial, "" otherwise.
func authKind(err error) string {
	switch {
	case errors.Is(err, kerr.SaslAuthenticationFailed), errors.Is(err, kerr.IllegalSaslState),
		errors.Is(err, kerr.UnsupportedSaslMechanism):
		return "authentication"
	case errors.Is(err, kerr.TopicAuthorizationFailed), errors.Is(err, kerr.GroupAuthorizationFailed),
		errors.Is(err, kerr.ClusterAuthorizationFailed), errors.Is(err, kerr.TransactionalIDAuthorizationFailed),
		errors.Is(err, kerr.DelegationTokenAuthorizationFailed):
		return "authorization"
	}
	return ""
}

// denied wraps a refused login or an ACL denial as channel.ErrUnauthenticated
// with a hint at the fix; it returns nil for other errors.
func denied(err error) error {
	switch authKind(err) {
	case "authentication":
		return fmt.Errorf("%w (the broker refused the SASL login: check sasl.username and sasl.password): %w", channel.ErrUnauthenticated, err)
	case "authorization":
		return fmt.Errorf("%w (no ACL allows this for the SASL user; deploy/kafka/kafka.sh acls grants a job's): %w", channel.ErrUnauthenticated, err)
	}
	return nil
}

// transportErr reports whether err says the brokers could not be reached or
// spoken to: a dial or connection failure, a TLS handshake refused either
// way, a broker that closed the connection at once (as one does to a client
// that does not speak its listener's security protocol), or a deadline
// that passed while the client was retrying those.
func transportErr(err error) bool {
	var ne net.Error
	var first *kgo.ErrFirstReadEOF
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var certErr x509.CertificateInvalidError
	var verifyErr *tls.CertificateVerificationError
	var alert tls.AlertError
	var recordErr tls.RecordHeaderError
	return errors.As(err, &ne) || errors.As(err, &first) || errors.As(err, &unknownAuth) || errors.As(err, &hostErr) ||
		errors.As(err, &certErr) || errors.As(err, &verifyErr) || errors.As(err, &alert) || errors.As(err, &recordErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, kerr.RequestTimedOut) || errors.Is(err, kgo.ErrClientClosed)
}

// unreachable marks transport failures so callers can tell "nothing there"
// from other errors, and refused logins and ACL denials as
// channel.ErrUnauthenticated.
func unreachable(err error) error {
	if err == nil {
		return nil
	}
	if d := denied(err); d != nil {
		return d
	}
	if transportErr(err) && !errors.Is(err, channel.ErrUnreachable) {
		return fmt.Errorf("%w: %w", channel.ErrUnreachable, err)
	}
	return err
}

// probeBrokers waits until the brokers answer a metadata request, up to
// ctx's deadline or def, and fails at once when a login or an ACL is
// refused. A refused connection is retried, a little later each time up
// to a second apart: a broker may be restarting, and each failed dial is a
// warning in the log.
func probeBrokers(ctx context.Context, cl *kgo.Client, brokers string, def time.Duration) error {
	ctx, cancel := withDefaultTimeout(ctx, def)
	defer cancel()
	var last error
	for backoff := 50 * time.Millisecond; ; backoff = min(2*backoff, time.Second) {
		req := kmsg.NewPtrMetadataRequest()
		step, stepCancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := req.RequestWith(step, cl)
		stepCancel()
		if err == nil {
			return nil
		}
		if d := denied(err); d != nil {
			return fmt.Errorf("kafka brokers %s: %w", brokers, d)
		}
		if !errors.Is(err, context.DeadlineExceeded) || last == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kafka brokers %s: %w (last broker error: %w)", brokers, channel.ErrUnreachable, last)
		case <-time.After(backoff):
		}
	}
}

// withDefaultTimeout bounds ctx by def when ctx has no earlier deadline.
func withDefaultTimeout(ctx context.Context, def time.Duration) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= def {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, def)
}
