package job

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/fdxkafka/fdxkafka/aggregator/scaleout"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// Scale-out roles (aggregator --role): see package scaleout.
const (
	RoleWorker = "worker"
	RoleLeader = "leader"
)

// RunRole runs one scale-out process of the job r describes on the Kafka
// brokers of cc: a worker named worker, or the leader. Only synchronous
// FedAvg jobs scale out; anything else is refused with the reason.
func RunRole(ctx context.Context, r *Resolved, cc ChannelConfig, env Env, role, worker string) error {
	spec := r.spec
	switch {
	case role != RoleWorker && role != RoleLeader:
		return fmt.Errorf("--role %q: want %s or %s", role, RoleWorker, RoleLeader)
	case cc.Transport != Kafka:
		return errors.New("--role needs an external Kafka broker (--broker): workers and leader are separate processes")
	case spec.Rounds.Mode == ModeAsync:
		return errors.New("--role: asynchronous jobs do not scale out (a version is the next K updates in one order)")
	case role == RoleWorker && worker == "":
		return errors.New("--role worker needs --worker-name, unique in the job and kept across restarts")
	case spec.Training.ModelEncoding != "" && spec.Training.ModelEncoding != "float32":
		return errors.New("--role: the leader publishes float32 models (--model-encoding float16 is a single-aggregator feature)")
	}
	if err := scaleout.CheckStrategy(spec.Strategy.Name); err != nil {
		return err
	}
	rd := spec.Rounds
	if spec.Sampling.FractionFit < 1 || spec.Sampling.FractionEvaluate > 0 || rd.TargetClients > rd.MinClients || rd.RoundTimeout > 0 || rd.TargetAccuracy > 0 {
		return errors.New("--role: sampling, federated evaluation, --target-clients, --round-timeout and --target-accuracy are single-aggregator features")
	}
	// Scale-out folds with exact partial sums, not the strategy; taking
	// it marks the job as run all the same.
	if _, err := r.takeStrategy(); err != nil {
		return err
	}
	log := env.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	maxBytes := r.maxBytes
	cfg := r.ScaleoutConfig()
	parts := cc.UpdatePartitions
	if parts == 0 {
		parts = 4
	}
	ko := kafkachan.Options{Brokers: cc.Brokers, Job: spec.Job, Properties: cc.KafkaProperties, Logger: log}
	if cc.Signer != nil {
		ko.Verifier = trust.NewVerifier(cc.Signer.Public())
		// Workers and the leader share the model key; partials are
		// MAC'd with a key derived from it, so no second secret.
		cfg.PartialKey = cc.Signer.DeriveKey("partials")
	}
	so := kafkachan.ServerOptions{
		Options:            ko,
		TopicOptions:       kafkachan.TopicOptions{UpdatePartitions: parts, MaxMessageBytes: maxBytes},
		BeforeCommit:       cc.BeforeCommit,
		OnStall:            cc.OnStall,
		TransactionTimeout: cc.TransactionTimeout,
		Signer:             cc.Signer,
		Tokens:             cc.Tokens,
	}
	if role == RoleWorker {
		ch, err := kafkachan.NewWorker(ctx, so, worker)
		if err != nil {
			return err
		}
		defer ch.Close()
		w, err := scaleout.NewWorker(cfg, worker, ch, log)
		if err != nil {
			return err
		}
		log.Info("scale-out worker started", "job", spec.Job, "worker", worker)
		return w.Run(ctx)
	}
	so.MaxMessageBytes = scaleout.LeaderMessageBytes(maxBytes)
	ch, err := kafkachan.NewLeader(ctx, so)
	if err != nil {
		return err
	}
	defer ch.Close()
	l, err := scaleout.NewLeader(cfg, ch, log)
	if err != nil {
		return err
	}
	log.Info("scale-out leader started", "job", spec.Job, "partials_topic", kafkachan.PartialsTopic(spec.Job))
	final, _, err := l.Run(ctx)
	if err != nil {
		return err
	}
	log.Info("final model published", "round", final.GetRound())
	return nil
}
