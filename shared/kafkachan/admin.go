package kafkachan

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// TopicOptions size the job's topics.
type TopicOptions struct {
	// UpdatePartitions is the partition count of the updates topic.
	UpdatePartitions int
	// ModelPartitions is the partition count of the model topic (0: 1).
	// With more than one, the chunks of a model are spread over them, so
	// that clients' downloads spread over their leaders; manifests stay on
	// partition 0. An existing topic is raised to it.
	ModelPartitions int
	// MaxMessageBytes is the topics' max.message.bytes.
	MaxMessageBytes int
	// ReplicationFactor of new topics; -1 takes the broker's default, and 0
	// chooses by cluster size: 3, with min.insync.replicas=2, when the
	// cluster has at least 3 brokers (a broker may then die without losing
	// an acknowledged update or model, and the job goes on), else the
	// broker's default.
	ReplicationFactor int
	// Partials also creates the scale-out partials topic (role.go).
	Partials bool
}

// replicatedMinISR is the min.insync.replicas of topics with 3 replicas:
// acks=all writes survive one lost broker and still succeed while one is
// down.
const replicatedMinISR = 2

// EnsureTopics creates the job's topics, or raises max.message.bytes on
// existing ones that are too small for the model, so that a model record is
// never refused mid-job.
func EnsureTopics(ctx context.Context, o Options, to TopicOptions) error {
	if err := o.validate(); err != nil {
		return err
	}
	if to.UpdatePartitions < 1 {
		to.UpdatePartitions = 1
	}
	to.ModelPartitions = max(1, to.ModelPartitions)
	if to.MaxMessageBytes < MinMessageBytes {
		to.MaxMessageBytes = MinMessageBytes
	}
	// An admin client made from a producer shares its log channel (when
	// enabled, see configMap).
	cm := o.producerConfig(nil)
	p, err := kafka.NewProducer(&cm)
	if err != nil {
		return fmt.Errorf("admin client: %w", err)
	}
	startLogs(p, cm, o.logger())
	var auth authWatch
	go drainEvents(p, o.logger(), func(e kafka.Error) { auth.see(e) })
	defer p.Close()
	// Fail fast on a wrong password or no broker, rather than when the
	// admin request below times out.
	if err := probeBrokers(ctx, p, &auth, o.Brokers, 10*time.Second); err != nil {
		return err
	}
	ac, err := kafka.NewAdminClientFromProducer(p)
	if err != nil {
		return fmt.Errorf("admin client: %w", err)
	}
	defer ac.Close()
	if to.ReplicationFactor == 0 {
		md, err := p.GetMetadata(nil, false, timeoutMs(ctx, 10*time.Second))
		if err != nil {
			return fmt.Errorf("count brokers: %w", unreachable(err))
		}
		to.ReplicationFactor = -1
		if len(md.Brokers) >= 3 {
			to.ReplicationFactor = 3
		}
	}
	config := func() map[string]string {
		c := map[string]string{"max.message.bytes": strconv.Itoa(to.MaxMessageBytes)}
		if to.ReplicationFactor >= 3 {
			c["min.insync.replicas"] = strconv.Itoa(replicatedMinISR)
		}
		return c
	}
	specs := []kafka.TopicSpecification{
		{Topic: ModelTopic(o.Job), NumPartitions: to.ModelPartitions, ReplicationFactor: to.ReplicationFactor, Config: config()},
		{Topic: UpdatesTopic(o.Job), NumPartitions: to.UpdatePartitions, ReplicationFactor: to.ReplicationFactor, Config: config()},
	}
	if to.Partials {
		specs = append(specs, kafka.TopicSpecification{Topic: PartialsTopic(o.Job), NumPartitions: 1, ReplicationFactor: to.ReplicationFactor, Config: config()})
	}
	res, err := ac.CreateTopics(ctx, specs)
	if err != nil {
		return fmt.Errorf("create topics: %w", unreachable(err))
	}
	for _, r := range res {
		switch r.Error.Code() {
		case kafka.ErrNoError:
		case kafka.ErrTopicAlreadyExists:
			if err := raiseMaxBytes(ctx, ac, r.Topic, to.MaxMessageBytes); err != nil {
				return err
			}
			if r.Topic == ModelTopic(o.Job) && to.ModelPartitions > 1 {
				if err := raisePartitions(ctx, ac, r.Topic, to.ModelPartitions); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("create topic %s: %w", r.Topic, unreachable(r.Error))
		}
	}
	return nil
}

// raisePartitions gives topic at least n partitions.
func raisePartitions(ctx context.Context, ac *kafka.AdminClient, topic string, n int) error {
	res, err := ac.CreatePartitions(ctx, []kafka.PartitionsSpecification{{Topic: topic, IncreaseTo: n}})
	if err != nil {
		return fmt.Errorf("add partitions to %s: %w", topic, unreachable(err))
	}
	for _, r := range res {
		// INVALID_PARTITIONS: it already has n or more.
		if c := r.Error.Code(); c != kafka.ErrNoError && c != kafka.ErrInvalidPartitions {
			return fmt.Errorf("add partitions to %s: %w", topic, r.Error)
		}
	}
	return nil
}

func raiseMaxBytes(ctx context.Context, ac *kafka.AdminClient, topic string, want int) error {
	res, err := ac.DescribeConfigs(ctx, []kafka.ConfigResource{{Type: kafka.ResourceTopic, Name: topic}})
	if err != nil {
		return fmt.Errorf("describe topic %s: %w", topic, err)
	}
	if len(res) != 1 {
		return fmt.Errorf("describe topic %s: %d results", topic, len(res))
	}
	if res[0].Error.Code() != kafka.ErrNoError {
		return fmt.Errorf("describe topic %s: %w", topic, unreachable(res[0].Error))
	}
	cur, err := strconv.Atoi(res[0].Config["max.message.bytes"].Value)
	if err == nil && cur >= want {
		return nil
	}
	alt, err := ac.IncrementalAlterConfigs(ctx, []kafka.ConfigResource{{
		Type: kafka.ResourceTopic, Name: topic,
		Config: []kafka.ConfigEntry{{Name: "max.message.bytes", Value: strconv.Itoa(want), IncrementalOperation: kafka.AlterConfigOpTypeSet}},
	}})
	if err != nil {
		return fmt.Errorf("raise max.message.bytes of %s to %d: %w", topic, want, err)
	}
	for _, r := range alt {
		if r.Error.Code() != kafka.ErrNoError {
			return fmt.Errorf("raise max.message.bytes of %s to %d: %w", topic, want, unreachable(r.Error))
		}
	}
	return nil
}

// unreachable marks transport failures so callers can tell "nothing there"
// from other errors, and refused logins and ACL denials as
// channel.ErrUnauthenticated.
func unreachable(err error) error {
	if d := denied(err); d != nil {
		return d
	}
	var ke kafka.Error
	if errors.As(err, &ke) {
		switch ke.Code() {
		case kafka.ErrTransport, kafka.ErrAllBrokersDown, kafka.ErrResolve, kafka.ErrTimedOut:
			return fmt.Errorf("%w: %w", channel.ErrUnreachable, err)
		}
	}
	return err
}
