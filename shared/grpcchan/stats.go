package grpcchan

import (
	"context"

	"google.golang.org/grpc/stats"

	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// counter counts every message in either direction at the wire, so the
// evaluation compares like with like: Kafka counts records, gRPC messages.
type counter struct{ c *channel.Counter }

var _ stats.Handler = counter{}

func (counter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (counter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (counter) HandleConn(context.Context, stats.ConnStats)                       {}

func (h counter) HandleRPC(_ context.Context, s stats.RPCStats) {
	switch p := s.(type) {
	case *stats.InPayload:
		h.c.Received(p.WireLength)
	case *stats.OutPayload:
		h.c.Sent(p.WireLength)
	}
}
