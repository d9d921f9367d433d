package scaleout

import (
	"context"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// Models is what both roles need of their transport: the newest model
// that passes valid, and publishing the next one (the leader's round
// commit; workers only read).
type Models interface {
	Latest(ctx context.Context, valid func(*fdxv1.GlobalModel) error) (*fdxv1.GlobalModel, error)
	Publish(ctx context.Context, m *fdxv1.GlobalModel) error
}

// WorkerTransport is a worker's channel: its share of the job's updates
// and a way to publish partials. Publishing a partial must also commit
// the reads of the updates it folds, atomically (the Kafka channel does
// both in one transaction), or a restart would count them twice.
type WorkerTransport interface {
	Models
	Next(ctx context.Context) (channel.Delivery, error)
	// Revocations counts the times the worker's share was taken away
	// (a rebalance): the batch in progress is then dropped.
	Revocations() int
	PublishPartial(ctx context.Context, round int64, worker string, value []byte) error
}

// LeaderTransport is the leader's channel: the workers' partials in, the
// merged models out.
type LeaderTransport interface {
	Models
	NextPartial(ctx context.Context) (channel.Partial, error)
}
