package kafkachan

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// Scale-out (aggregator --role worker / leader). Workers share the
// aggregator's consumer group over fdx.<job>.updates, so Kafka spreads the
// update partitions over them; each folds its partitions into a partial and
// publishes it, together with the offsets of the updates it folded, in one
// transaction of its own to fdx.<job>.partials. The leader reads partials
// (read_committed, its own group) and closes a round as the single
// aggregator does: one transaction with the model and the offsets of the
// partials it merged. An update is therefore folded into exactly one
// committed partial, and a partial into exactly one model.

// PartialsTopic carries the workers' partial aggregates (one partition:
// the leader reads them in commit order).
func PartialsTopic(job string) string { return "fdx." + job + ".partials" }

// LeaderGroupID is the leader's consumer group over the partials topic.
func LeaderGroupID(job string) string { return "fdx." + job + ".leader" }

// WorkerTransactionalID is stable per worker name, so that a restarted
// worker fences its killed predecessor and aborts its open transaction.
func WorkerTransactionalID(job, worker string) string { return "fdx." + job + ".worker." + worker }

// role is what a Server consumes, in which group, and as which
// transactional producer.
type role struct {
	topic, group, instance, txID string
}

func aggregatorRole(job string) role {
	return role{topic: UpdatesTopic(job), group: GroupID(job), instance: GroupID(job), txID: TransactionalID(job)}
}

// NewWorker opens a scale-out worker named worker: a member of the
// aggregator's group over the updates topic (static member
// fdx.<job>.aggregator.<worker>) with its own transactional producer. Next
// delivers its partitions' updates; PublishPartial closes a batch.
func NewWorker(ctx context.Context, opt ServerOptions, worker string) (*Server, error) {
	if err := rules.ValidateJob(worker); err != nil {
		return nil, fmt.Errorf("worker name: %w", err)
	}
	opt.Partials = true
	// A partial is larger than a model (16 bytes per parameter): the
	// topics must take whole chunks even when the model needs none.
	opt.MaxMessageBytes = max(opt.MaxMessageBytes, opt.chunkBytes()+recordOverhead)
	return openServer(ctx, opt, role{topic: UpdatesTopic(opt.Job), group: GroupID(opt.Job),
		instance: GroupID(opt.Job) + "." + worker, txID: WorkerTransactionalID(opt.Job, worker)})
}

// NewLeader opens the scale-out leader: it consumes the partials topic and
// publishes models with the aggregator's transactional id, so it fences a
// single aggregator of the same job (and is fenced by one). NextPartial
// delivers partials; Publish commits a model with the partials' offsets.
func NewLeader(ctx context.Context, opt ServerOptions) (*Server, error) {
	opt.Partials = true
	return openServer(ctx, opt, role{topic: PartialsTopic(opt.Job), group: LeaderGroupID(opt.Job),
		instance: LeaderGroupID(opt.Job), txID: TransactionalID(opt.Job)})
}

// PublishPartial is a worker's commit: one transaction with the partial
// (in chunks if large) keyed by the worker, and the offsets of every update
// delivered since the last commit. Nothing is committed when ctx ends or
// the worker was fenced; its updates are then read again by whoever owns
// their partitions.
func (s *Server) PublishPartial(ctx context.Context, round int64, key string, value []byte) error {
	topic := PartialsTopic(s.opt.Job)
	err := s.commitRound(ctx, round, func() ([]*kgo.Record, error) {
		if len(value) <= s.opt.chunkBytes() {
			return []*kgo.Record{{Topic: topic, Partition: 0, Key: []byte(key), Value: value}}, nil
		}
		chunks, manifest, err := transferRecords(topic, 0, []byte(key), value, s.opt.chunkBytes())
		if err != nil {
			return nil, err
		}
		return append(chunks, manifest), nil
	})
	if err != nil {
		return fmt.Errorf("publish partial round %d: %w", round, err)
	}
	return nil
}

// NextPartial is the leader's read: the next committed partial, whole
// (chunks reassembled and checked). It returns ctx's error when ctx ends
// first.
func (s *Server) NextPartial(ctx context.Context) (channel.Partial, error) {
	for {
		if err := ctx.Err(); err != nil {
			return channel.Partial{}, err
		}
		rec, err := s.nextRecord(ctx)
		if err != nil {
			return channel.Partial{}, fmt.Errorf("consume %s: %w", s.role.topic, err)
		}
		s.consumed[rec.Partition] = rec.Offset + 1
		s.count.Received(len(rec.Value) + len(rec.Key))
		// A partial's chunks and manifest come from its worker's
		// transactional producer in one transaction: grouped by producer
		// too, records others write under the worker's name cannot
		// replace its transfer in progress.
		sender := fmt.Sprintf("%s\x00%d", rec.Key, rec.ProducerID)
		switch {
		case isChunk(rec):
			s.partialsDropped(ctx, s.updates.add(rec, sender))
			continue
		case isManifest(rec):
			whole, failed := s.updates.complete(rec, sender)
			s.partialsDropped(ctx, failed)
			if whole == nil {
				continue
			}
			return channel.Partial{Worker: string(rec.Key), Value: whole, Where: fmt.Sprintf("%s[%d]@%d", s.role.topic, rec.Partition, rec.Offset)}, nil
		}
		return channel.Partial{Worker: string(rec.Key), Value: rec.Value, Where: fmt.Sprintf("%s[%d]@%d", s.role.topic, rec.Partition, rec.Offset)}, nil
	}
}

// partialsDropped counts and logs partial transfers that did not
// reassemble. They are skipped, never a reason to stop the leader: anyone
// who can write the partials topic can write broken chunks.
func (s *Server) partialsDropped(ctx context.Context, failed []*transferError) {
	for _, f := range failed {
		s.count.Rejected()
		s.warn.Warn(ctx, "partial_"+string(f.Reason), "partial transfer dropped", "topic", s.role.topic, "key", f.Key, "err", f.Detail)
	}
}

// Revocations counts how often the server lost partitions (a rebalance or
// a rejoin). A worker that sees it change drops the batch it has not
// committed: those records are delivered again, to it or to another member.
func (s *Server) Revocations() int { return s.revocations }

// Assigned is the number of partitions the server's consumer holds now.
// Safe to call from any goroutine.
func (s *Server) Assigned() int { return int(s.group.held.Load()) }
