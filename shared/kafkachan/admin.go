package kafkachan

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
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

// adminTimeout bounds EnsureTopics when its caller set no deadline.
const adminTimeout = 30 * time.Second

// EnsureTopics creates the job's topics, or raises max.message.bytes on
// existing ones that are too small for the model, so that a model record is
// never refused mid-job.
func EnsureTopics(ctx context.Context, o Options, to TopicOptions) error {
	if err := o.validate(); err != nil {
		return err
	}
	ctx, cancel := withDefaultTimeout(ctx, adminTimeout)
	defer cancel()
	if to.UpdatePartitions < 1 {
		to.UpdatePartitions = 1
	}
	to.ModelPartitions = max(1, to.ModelPartitions)
	if to.MaxMessageBytes < MinMessageBytes {
		to.MaxMessageBytes = MinMessageBytes
	}
	opts, err := o.clientOpts()
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return fmt.Errorf("admin client: %w", err)
	}
	defer cl.Close()
	// Fail fast on a wrong password or no broker, rather than when the
	// admin request below times out.
	if err := probeBrokers(ctx, cl, o.Brokers, 10*time.Second); err != nil {
		return err
	}
	adm := kadm.NewClient(cl)
	if to.ReplicationFactor == 0 {
		md, err := adm.BrokerMetadata(ctx)
		if err != nil {
			return fmt.Errorf("count brokers: %w", unreachable(err))
		}
		to.ReplicationFactor = -1
		if len(md.Brokers) >= 3 {
			to.ReplicationFactor = 3
		}
	}
	config := map[string]*string{"max.message.bytes": kadm.StringPtr(strconv.Itoa(to.MaxMessageBytes))}
	if to.ReplicationFactor >= 3 {
		config["min.insync.replicas"] = kadm.StringPtr(strconv.Itoa(replicatedMinISR))
	}
	specs := []struct {
		topic      string
		partitions int
	}{{ModelTopic(o.Job), to.ModelPartitions}, {UpdatesTopic(o.Job), to.UpdatePartitions}}
	if to.Partials {
		specs = append(specs, struct {
			topic      string
			partitions int
		}{PartialsTopic(o.Job), 1})
	}
	for _, sp := range specs {
		res, err := adm.CreateTopics(ctx, int32(sp.partitions), int16(to.ReplicationFactor), config, sp.topic)
		if err != nil {
			return fmt.Errorf("create topic %s: %w", sp.topic, unreachable(err))
		}
		r, ok := res[sp.topic]
		if !ok {
			return fmt.Errorf("create topic %s: no answer for it", sp.topic)
		}
		switch {
		case r.Err == nil:
		case errors.Is(r.Err, kerr.TopicAlreadyExists):
			if err := raiseMaxBytes(ctx, adm, sp.topic, to.MaxMessageBytes); err != nil {
				return err
			}
			if sp.topic == ModelTopic(o.Job) && to.ModelPartitions > 1 {
				if err := raisePartitions(ctx, adm, sp.topic, to.ModelPartitions); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("create topic %s: %w", sp.topic, unreachable(r.Err))
		}
	}
	return nil
}

// raisePartitions gives topic at least n partitions.
func raisePartitions(ctx context.Context, adm *kadm.Client, topic string, n int) error {
	res, err := adm.UpdatePartitions(ctx, n, topic)
	if err != nil {
		return fmt.Errorf("add partitions to %s: %w", topic, unreachable(err))
	}
	for _, r := range res {
		// INVALID_PARTITIONS: it already has n or more.
		if r.Err != nil && !errors.Is(r.Err, kerr.InvalidPartitions) {
			return fmt.Errorf("add partitions to %s: %w", topic, unreachable(r.Err))
		}
	}
	return nil
}

// topicMaxMessageBytes reads a topic's max.message.bytes.
func topicMaxMessageBytes(ctx context.Context, adm *kadm.Client, topic string) (int, error) {
	res, err := adm.DescribeTopicConfigs(ctx, topic)
	if err != nil {
		return 0, fmt.Errorf("describe topic %s: %w", topic, unreachable(err))
	}
	rc, err := res.On(topic, nil)
	if err == nil {
		err = rc.Err
	}
	if err != nil {
		return 0, fmt.Errorf("describe topic %s: %w", topic, unreachable(err))
	}
	for _, c := range rc.Configs {
		if c.Key == "max.message.bytes" && c.Value != nil {
			return strconv.Atoi(*c.Value)
		}
	}
	return 0, fmt.Errorf("describe topic %s: no max.message.bytes", topic)
}

// setMaxMessageBytes sets a topic's max.message.bytes.
func setMaxMessageBytes(ctx context.Context, adm *kadm.Client, topic string, n int) error {
	alt, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Op: kadm.SetConfig, Name: "max.message.bytes", Value: kadm.StringPtr(strconv.Itoa(n))}}, topic)
	if err == nil {
		for _, r := range alt {
			if r.Err != nil {
				err = r.Err
			}
		}
	}
	if err != nil {
		return fmt.Errorf("set max.message.bytes of %s to %d: %w", topic, n, unreachable(err))
	}
	return nil
}

func raiseMaxBytes(ctx context.Context, adm *kadm.Client, topic string, want int) error {
	cur, err := topicMaxMessageBytes(ctx, adm, topic)
	if err == nil && cur >= want {
		return nil
	}
	return setMaxMessageBytes(ctx, adm, topic, want)
}
