package main

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/tensor"
)

// RawReport is the bare consumer's rate: the ceiling the aggregator's
// ingest is compared with.
type RawReport struct {
	Updates       int     `json:"updates"`
	Bytes         int64   `json:"bytes"`
	Ms            float64 `json:"ms"`
	UpdatesPerSec float64 `json:"updates_per_s"`
	MBPerSec      float64 `json:"mb_per_s"`
}

// rawRate reads want records of the job's updates topic from the start
// with a consumer of its own, as the aggregator does (read_committed, same
// fetch sizes), and only decodes them: the protobuf and the tensors.
func rawRate(ctx context.Context, cfg Config, want int) (RawReport, error) {
	maxBytes := 64 << 20
	cm := kafka.ConfigMap{
		"bootstrap.servers":         cfg.Brokers,
		"group.id":                  "fleet-raw-" + cfg.Job,
		"enable.auto.commit":        false,
		"auto.offset.reset":         "earliest",
		"isolation.level":           "read_committed",
		"fetch.wait.max.ms":         50,
		"max.partition.fetch.bytes": maxBytes,
		"fetch.max.bytes":           maxBytes * 2,
		"receive.message.max.bytes": maxBytes*2 + 1<<20,
		"go.logs.channel.enable":    true,
	}
	for k, v := range cfg.KafkaProperties {
		cm[k] = v
	}
	c, err := kafka.NewConsumer(&cm)
	if err != nil {
		return RawReport{}, err
	}
	defer c.Close()
	go forwardLogs(c.Logs(), cfg.Log)
	if err := c.Subscribe(kafkachan.UpdatesTopic(cfg.Job), nil); err != nil {
		return RawReport{}, err
	}
	var rep RawReport
	var start time.Time
	var buf []float32
	u := &fdxv1.Update{}
	for rep.Updates < want {
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("after %d of %d records: %w", rep.Updates, want, err)
		}
		switch ev := c.Poll(100).(type) {
		case *kafka.Message:
			if ev.TopicPartition.Error != nil {
				return rep, ev.TopicPartition.Error
			}
			if rep.Updates == 0 {
				start = time.Now()
			}
			u.Reset()
			if err := proto.Unmarshal(ev.Value, u); err != nil {
				return rep, fmt.Errorf("record %d: %w", rep.Updates, err)
			}
			for _, t := range u.GetParams() {
				if buf, err = tensor.Float32s(buf[:0], t); err != nil {
					return rep, fmt.Errorf("record %d: %w", rep.Updates, err)
				}
			}
			rep.Updates++
			rep.Bytes += int64(len(ev.Key) + len(ev.Value))
		case kafka.Error:
			if ev.IsFatal() {
				return rep, ev
			}
		}
	}
	// The first record's fetch latency is not part of the rate.
	d := time.Since(start)
	rep.Ms = ms(d)
	rep.UpdatesPerSec = float64(rep.Updates-1) / d.Seconds()
	rep.MBPerSec = float64(rep.Bytes) / 1e6 / d.Seconds()
	return rep, nil
}

// medianIngest is the median of the rounds' ingest rates.
func medianIngest(rs []RoundReport) float64 {
	if len(rs) == 0 {
		return 0
	}
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = r.UpdatesPerSec
	}
	sort.Float64s(v)
	return v[len(v)/2]
}
