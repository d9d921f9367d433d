package main

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
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
// with a consumer of its own (no group), as the aggregator does
// (read_committed, same fetch sizes), and only decodes them: the protobuf
// and the tensors.
func rawRate(ctx context.Context, cfg Config, want int) (RawReport, error) {
	maxBytes := int32(64 << 20)
	opt := kafkachan.Options{Brokers: cfg.Brokers, Job: cfg.Job, Properties: cfg.KafkaProperties, Logger: cfg.Log.With("part", "raw")}
	opts, err := opt.ClientOpts(
		kgo.ConsumeTopics(kafkachan.UpdatesTopic(cfg.Job)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(50*time.Millisecond),
		kgo.FetchMaxPartitionBytes(maxBytes),
		kgo.FetchMaxBytes(2*maxBytes),
		kgo.BrokerMaxReadBytes(2*maxBytes+1<<20),
	)
	if err != nil {
		return RawReport{}, err
	}
	c, err := kgo.NewClient(opts...)
	if err != nil {
		return RawReport{}, err
	}
	defer c.Close()
	var rep RawReport
	var start time.Time
	var buf []float32
	u := &fdxv1.Update{}
	for rep.Updates < want {
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("after %d of %d records: %w", rep.Updates, want, err)
		}
		fs := c.PollRecords(ctx, want-rep.Updates)
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("after %d of %d records: %w", rep.Updates, want, err)
		}
		if err := fs.Err(); err != nil {
			return rep, err
		}
		for it := fs.RecordIter(); !it.Done(); {
			r := it.Next()
			if rep.Updates == 0 {
				start = time.Now()
			}
			u.Reset()
			if err := proto.Unmarshal(r.Value, u); err != nil {
				return rep, fmt.Errorf("record %d: %w", rep.Updates, err)
			}
			for _, t := range u.GetParams() {
				if buf, err = tensor.Float32s(buf[:0], t); err != nil {
					return rep, fmt.Errorf("record %d: %w", rep.Updates, err)
				}
			}
			rep.Updates++
			rep.Bytes += int64(len(r.Key) + len(r.Value))
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
