package kafkachan

// Round transactions. Closing a round is one transaction: the model's
// records (or a worker's partial) and the offsets of the records consumed
// for it, committed together, so that a crash at any instant loses no
// update and counts none twice.
//
// Every step has a deadline: each attempt at most TransactionTimeout, the
// round with its retries at most two, and an abort at most one more. A
// failure before the commit is requested aborts the transaction; when the
// failure may pass (a broker restarting, a group rebalancing) the round is
// tried again until the deadline. Once the commit is requested, only a
// reply tells what happened: an error instead of a reply (a timeout, a
// lost connection, a fenced producer) leaves the outcome unknown. kgo may
// even report "context canceled" for an EndTxn that the broker carried
// out. The server does not guess: it returns channel.ErrOutcomeUnknown and
// refuses to go on, and the aggregator exits with its own exit code so
// that its supervisor restarts it; the restart reads what was committed
// (the model topic is the checkpoint). A Kafka call that does not return
// at all is caught by the watchdog (ServerOptions.OnStall).

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// maxAbortTimeout bounds aborting a failed transaction (at most one
// TransactionTimeout), whatever is left of the caller's deadline: an abort
// that cannot finish leaves the producer in a state only a restart clears.
const maxAbortTimeout = 30 * time.Second

func (s *Server) abortTimeout() time.Duration {
	return min(maxAbortTimeout, s.opt.TransactionTimeout)
}

// commitRound commits one round's records, built anew by build for every
// attempt, with the consumed offsets, retrying what may pass until ctx
// ends or two transaction timeouts pass: retries ride out a broker
// restart, but past that the round is better retried by a fresh process
// than by this producer. The watchdog (OnStall) is armed throughout.
func (s *Server) commitRound(ctx context.Context, round int64, build func() ([]*kgo.Record, error)) error {
	if s.broken != nil {
		return s.broken
	}
	if s.c == nil {
		return fmt.Errorf("no updates consumer: its rejoin failed")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*s.opt.TransactionTimeout)
	defer cancel()
	defer s.watch(ctx, fmt.Sprintf("round %d transaction", round), s.abortTimeout())()
	for attempt := 0; ; attempt++ {
		records, err := build()
		if err != nil {
			return err
		}
		err = s.transact(ctx, round, records)
		if err == nil {
			s.consumed = map[int32]int64{}
			s.rejoins = 0
			for _, r := range records {
				s.count.Sent(len(r.Value) + len(r.Key))
			}
			return nil
		}
		if errors.Is(err, channel.ErrOutcomeUnknown) {
			s.broken = err
			s.opt.logger().Error("round transaction outcome unknown; this aggregator must restart", "round", round, "err", err)
			return err
		}
		if ctx.Err() != nil || !retriable(err) {
			return err
		}
		s.opt.logger().Warn("round transaction failed, retrying", "round", round, "attempt", attempt+1, "err", err)
		// A rebalance the transaction ran into (its generation is stale)
		// completes only when allowed; drain applies it before the next
		// attempt computes the offsets.
		s.c.AllowRebalance()
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (after %v)", ctx.Err(), err)
		case <-time.After(min(time.Duration(attempt+1)*200*time.Millisecond, 2*time.Second)):
		}
	}
}

// transact runs one transaction: begin, produce the records, add the
// consumed offsets, commit.
func (s *Server) transact(ctx context.Context, round int64, records []*kgo.Record) error {
	ctx, cancel := withDefaultTimeout(ctx, s.opt.TransactionTimeout)
	defer cancel()
	if err := s.p.BeginTransaction(); err != nil {
		if errors.Is(err, kerr.ProducerFenced) || !retriable(err) {
			return fmt.Errorf("%w: begin transaction (fenced by another instance?): %w", channel.ErrOutcomeUnknown, err)
		}
		return fmt.Errorf("begin transaction: %w", err)
	}
	var after func(int)
	if s.opt.AfterChunk != nil && len(records) > 1 {
		after = func(i int) {
			if i < len(records)-1 {
				s.opt.AfterChunk(round, i)
			}
		}
	}
	if err := s.produceModel(ctx, records, after); err != nil {
		return s.abort(ctx, fmt.Errorf("produce: %w", err))
	}
	s.drain()
	offsets := make(map[int32]int64, len(s.consumed))
	for part, off := range s.consumed {
		// An update whose chunks are still arriving is read whole again
		// after a restart.
		if first, ok := s.updates.firstPending(part); ok && first < off {
			off = first
		}
		offsets[part] = off
	}
	if len(offsets) > 0 {
		if err := s.sendOffsets(ctx, offsets); err != nil {
			return s.abort(ctx, fmt.Errorf("commit offsets: %w", err))
		}
	}
	if s.opt.BeforeCommit != nil {
		s.opt.BeforeCommit(round)
	}
	err := s.p.EndTransaction(ctx, kgo.TryCommit)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, kerr.OperationNotAttempted), errors.Is(err, kerr.TransactionAbortable):
		// Refused before anything was committed: abort and try again.
		return s.abort(ctx, fmt.Errorf("commit: %w", err))
	}
	return fmt.Errorf("%w: commit of round %d: %w", channel.ErrOutcomeUnknown, round, err)
}

// abort aborts the open transaction after cause and returns cause, or
// channel.ErrOutcomeUnknown when the abort fails: the producer is then in a state
// only a restart clears. It has a deadline of its own, as the caller's may
// be what ended the transaction.
func (s *Server) abort(ctx context.Context, cause error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.abortTimeout())
	defer cancel()
	err := s.p.AbortBufferedRecords(ctx)
	if err == nil {
		err = s.p.EndTransaction(ctx, kgo.TryAbort)
	}
	if err != nil {
		return fmt.Errorf("%w: abort after %w: %w", channel.ErrOutcomeUnknown, cause, err)
	}
	return cause
}

// sendOffsets adds the consumer group's offsets to the open transaction:
// AddOffsetsToTxn to the transaction coordinator, then TxnOffsetCommit to
// the group coordinator with the consumer's member id and generation, so
// that the group refuses the commit if a rebalance gave the partitions to
// someone else meanwhile (KIP-447).
func (s *Server) sendOffsets(ctx context.Context, offsets map[int32]int64) error {
	id, epoch, err := s.p.ProducerID(ctx)
	if err != nil {
		return fmt.Errorf("producer id: %w", err)
	}
	add := kmsg.NewPtrAddOffsetsToTxnRequest()
	add.TransactionalID = s.role.txID
	add.ProducerID, add.ProducerEpoch = id, epoch
	add.Group = s.role.group
	for {
		resp, err := add.RequestWith(ctx, s.p)
		if err == nil {
			err = kerr.ErrorForCode(resp.ErrorCode)
		}
		if !errors.Is(err, kerr.ConcurrentTransactions) || ctx.Err() != nil {
			if err != nil {
				return fmt.Errorf("add offsets to transaction: %w", err)
			}
			break
		}
		// The previous transaction's markers are still being written.
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	member, generation := s.c.GroupMetadata()
	req := kmsg.NewPtrTxnOffsetCommitRequest()
	req.TransactionalID = s.role.txID
	req.Group = s.role.group
	req.ProducerID, req.ProducerEpoch = id, epoch
	req.MemberID, req.Generation = member, generation
	instance := s.role.instance
	req.InstanceID = &instance
	rt := kmsg.NewTxnOffsetCommitRequestTopic()
	rt.Topic = s.role.topic
	for p, off := range offsets {
		rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
		rp.Partition, rp.Offset, rp.LeaderEpoch = p, off, -1
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, s.p)
	if err != nil {
		return fmt.Errorf("txn offset commit: %w", err)
	}
	var errs []error
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				errs = append(errs, fmt.Errorf("%s[%d]: %w", t.Topic, p.Partition, err))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("txn offset commit (generation %d): %w", generation, errors.Join(errs...))
	}
	return nil
}

// retriable reports whether a failed transaction may succeed if tried
// again: the broker or a coordinator is moving or restarting, the group is
// rebalancing (the offsets' generation went stale), or the transaction
// timed out at the broker.
func retriable(err error) bool {
	for _, e := range []error{kerr.IllegalGeneration, kerr.UnknownMemberID, kerr.RebalanceInProgress, kerr.FencedInstanceID,
		kerr.StaleMemberEpoch, kerr.TransactionAbortable, kerr.OperationNotAttempted, kerr.InvalidProducerEpoch,
		kerr.InvalidProducerIDMapping, kerr.UnknownProducerID, kgo.ErrRecordTimeout, kgo.ErrRecordRetries} {
		if errors.Is(err, e) {
			return true
		}
	}
	return kerr.IsRetriable(err) || kgo.IsRetryableBrokerErr(err) || (transportErr(err) && !errors.Is(err, kgo.ErrClientClosed))
}
