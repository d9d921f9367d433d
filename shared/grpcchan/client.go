package grpcchan

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// ClientOptions configure a participant.
type ClientOptions struct {
	Addr string
	Job  string
	// ClientID is sent with model requests for the aggregator's logs.
	ClientID string
	// MaxMessageBytes bounds messages either way; 0 means 64 MiB.
	MaxMessageBytes int
	// TLS enables transport security; nil dials plaintext.
	TLS *tls.Config
	// Token is sent as "authorization: Bearer <token>" when set.
	Token string
}

// Client is a participant's gRPC channel.
type Client struct {
	opt   ClientOptions
	conn  *grpc.ClientConn
	api   fdxv1.AggregatorClient
	count channel.Counter
}

var _ channel.Client = (*Client)(nil)

// Dial connects and checks the aggregator's health before returning, so a
// wrong address fails fast with channel.ErrUnreachable.
func Dial(ctx context.Context, opt ClientOptions) (*Client, error) {
	if opt.Addr == "" {
		return nil, errors.New("grpc: no aggregator address")
	}
	if opt.MaxMessageBytes <= 0 {
		opt.MaxMessageBytes = 64 << 20
	}
	creds := insecure.NewCredentials()
	if opt.TLS != nil {
		creds = credentials.NewTLS(opt.TLS)
	}
	c := &Client{opt: opt}
	conn, err := grpc.NewClient(opt.Addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithStatsHandler(counter{&c.count}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(opt.MaxMessageBytes),
			grpc.MaxCallSendMsgSize(opt.MaxMessageBytes),
		),
	)
	if err != nil {
		return nil, fmt.Errorf("grpc dial %s: %w", opt.Addr, err)
	}
	c.conn = conn
	c.api = fdxv1.NewAggregatorClient(conn)
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("grpc aggregator %s: %w", opt.Addr, classify(err))
	}
	return c, nil
}

func (c *Client) outgoing(ctx context.Context) context.Context {
	if c.opt.Token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.opt.Token)
}

// Model implements channel.Client.
func (c *Client) Model(ctx context.Context, minRound int64) (*fdxv1.GlobalModel, error) {
	m, err := c.api.GetModel(c.outgoing(ctx), &fdxv1.GetModelRequest{Job: c.opt.Job, MinRound: minRound, ClientId: c.opt.ClientID})
	if err != nil {
		return nil, fmt.Errorf("get model round %d: %w", minRound, classify(err))
	}
	return m, nil
}

// Submit implements channel.Client; a refused update returns an error
// wrapping channel.ErrRejected with the aggregator's reason.
func (c *Client) Submit(ctx context.Context, u *fdxv1.Update) error {
	resp, err := c.api.SubmitUpdate(c.outgoing(ctx), u)
	if err != nil {
		return fmt.Errorf("submit update round %d: %w", u.GetBaseRound(), classify(err))
	}
	if !resp.GetAccepted() {
		reason := rules.ReasonOf(resp.GetRejectReason())
		rej := &rules.Rejection{Reason: reason, Detail: strings.TrimPrefix(resp.GetReason(), string(reason)+": ")}
		if rej.Reason == rules.StaleRound {
			// The round closed while we trained: the same answer as
			// asking for a closed round.
			return fmt.Errorf("submit update round %d: %w: %w: %w", u.GetBaseRound(), channel.ErrRoundClosed, channel.ErrRejected, rej)
		}
		return fmt.Errorf("submit update round %d: %w: %w", u.GetBaseRound(), channel.ErrRejected, rej)
	}
	return nil
}

// Stats implements channel.Client.
func (c *Client) Stats() channel.Stats { return c.count.Stats() }

// Close implements channel.Client.
func (c *Client) Close() error { return c.conn.Close() }

// Healthy reports whether the connection may be reused: it is not shut
// down or failing. It only reads the connection's state, so a warm
// invocation pays no round trip for it.
func (c *Client) Healthy(context.Context) error {
	switch st := c.conn.GetState(); st {
	case connectivity.TransientFailure, connectivity.Shutdown:
		return fmt.Errorf("grpc aggregator %s: %w: connection %s", c.opt.Addr, channel.ErrUnreachable, st)
	}
	return nil
}

// classify maps gRPC statuses onto the channel's errors and the context's,
// so callers need not know which transport they use.
func classify(err error) error {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied:
		return fmt.Errorf("%w: %w", channel.ErrUnauthenticated, err)
	case codes.NotFound:
		return fmt.Errorf("%w: %w", channel.ErrJobNotFound, err)
	case codes.Unavailable:
		return fmt.Errorf("%w: %w", channel.ErrUnreachable, err)
	case codes.DeadlineExceeded:
		return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	case codes.Canceled:
		return fmt.Errorf("%w: %w", context.Canceled, err)
	}
	return err
}
