package grpcchan

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

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
	// MaxMessageBytes bounds messages either way; 0 means 64 MiB. Models
	// and updates of any size fit it: larger ones travel in chunks.
	MaxMessageBytes int
	// ChunkBytes is the chunk size, and the size above which an update is
	// sent in chunks; 0 means DefaultChunkBytes. It is capped to fit
	// MaxMessageBytes.
	ChunkBytes int
	// MaxModelBytes bounds a model received in chunks; 0 means the
	// protobuf limit (2 GiB).
	MaxModelBytes int
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
	if opt.MaxModelBytes <= 0 {
		opt.MaxModelBytes = maxTransferBytes
	}
	chunk, err := chunkSize(opt.ChunkBytes, opt.MaxMessageBytes)
	if err != nil {
		return nil, err
	}
	opt.ChunkBytes = chunk
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

// Model implements channel.Client. The model comes in chunks, so its size
// is bounded by MaxModelBytes, not by the message limit; an aggregator
// that does not stream chunks is asked for the whole.
func (c *Client) Model(ctx context.Context, minRound int64) (*fdxv1.GlobalModel, error) {
	req := &fdxv1.GetModelRequest{Job: c.opt.Job, MinRound: minRound, ClientId: c.opt.ClientID}
	m, err := c.modelChunks(ctx, req)
	if status.Code(err) == codes.Unimplemented {
		m, err = c.api.GetModel(c.outgoing(ctx), req)
	}
	if err != nil {
		return nil, fmt.Errorf("get model round %d: %w", minRound, classify(err))
	}
	return m, nil
}

// modelChunks receives one model on a GetModelChunks stream.
func (c *Client) modelChunks(ctx context.Context, req *fdxv1.GetModelRequest) (*fdxv1.GlobalModel, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream however the transfer went
	stream, err := c.api.GetModelChunks(c.outgoing(ctx), req)
	if err != nil {
		return nil, err
	}
	whole, rej, err := receive(stream.Recv, int64(c.opt.MaxModelBytes))
	if err != nil {
		return nil, err
	}
	if rej != nil {
		return nil, fmt.Errorf("model transfer refused: %w", rej)
	}
	m := &fdxv1.GlobalModel{}
	if err := proto.Unmarshal(whole, m); err != nil {
		return nil, fmt.Errorf("decode model of %d bytes: %w", len(whole), err)
	}
	return m, nil
}

// Submit implements channel.Client; a refused update returns an error
// wrapping channel.ErrRejected with the aggregator's reason. An update
// larger than the chunk size goes in chunks.
func (c *Client) Submit(ctx context.Context, u *fdxv1.Update) error {
	var resp *fdxv1.SubmitUpdateResponse
	var err error
	if proto.Size(u) > c.opt.ChunkBytes {
		resp, err = c.submitChunks(ctx, u)
	} else {
		resp, err = c.api.SubmitUpdate(c.outgoing(ctx), u)
	}
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

// submitChunks sends u on a SubmitUpdateChunks stream.
func (c *Client) submitChunks(ctx context.Context, u *fdxv1.Update) (*fdxv1.SubmitUpdateResponse, error) {
	x, err := encode(u, c.opt.ChunkBytes)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.api.SubmitUpdateChunks(c.outgoing(ctx))
	if err != nil {
		return nil, err
	}
	// io.EOF from Send means the server ended the call early (a refused
	// transfer, an error): its answer is what CloseAndRecv returns.
	if err := x.send(stream.Send); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return stream.CloseAndRecv()
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
