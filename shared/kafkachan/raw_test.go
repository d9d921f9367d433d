package kafkachan

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Tests reach the broker with plain kgo clients where they act as someone
// else than the channel: an operator (kadm), a writer outside the round
// transaction, a probe reading a partition.

// rawClient is a kgo client of brokers with opts; the test closes it.
func rawClient(t *testing.T, brokers string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(strings.Split(brokers, ",")...)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// admin is an operator's kadm client.
func admin(t *testing.T, brokers string) *kadm.Client {
	t.Helper()
	return kadm.NewClient(rawClient(t, brokers))
}

// rawProduce writes records as anyone who can reach the broker could: no
// transaction, no signature. A record's Partition places it (byKey: by its
// key, as the channel does); kgo sets Partition and Offset where it landed.
// Records go one at a time, so that each batch holds one record and stays
// within the topic's max.message.bytes, whatever the chunk size.
func rawProduce(ctx context.Context, t *testing.T, brokers string, recs []*kgo.Record) {
	t.Helper()
	cl := rawClient(t, brokers, kgo.RecordPartitioner(keyPartitioner()), kgo.ProducerBatchMaxBytes(16<<20),
		kgo.RequiredAcks(kgo.AllISRAcks()), kgo.ProducerLinger(0))
	for i, r := range recs {
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatalf("raw produce of record %d of %d: %v", i, len(recs), err)
		}
	}
}

// readPartition returns the records of topic's partition, from its start
// to its end when called: the committed ones (read_committed) or all of
// them, committed or not.
func readPartition(ctx context.Context, t *testing.T, brokers, topic string, partition int32, committed bool) []*kgo.Record {
	t.Helper()
	adm := admin(t, brokers)
	endOf := func(list func(context.Context, ...string) (kadm.ListedOffsets, error)) int64 {
		t.Helper()
		ends, err := list(ctx, topic)
		if err != nil {
			t.Fatalf("end offsets of %s: %v", topic, err)
		}
		end, ok := ends.Lookup(topic, partition)
		if !ok || end.Err != nil {
			t.Fatalf("end offset of %s[%d]: %v", topic, partition, end.Err)
		}
		return end.Offset
	}
	end, iso := endOf(adm.ListEndOffsets), kgo.ReadUncommitted()
	if committed {
		// A commit returns before its markers are written: read once
		// the last stable offset has caught up with the end, which it
		// does when no transaction is left open on the partition.
		iso = kgo.ReadCommitted()
		for endOf(adm.ListCommittedOffsets) < end {
			select {
			case <-ctx.Done():
				t.Fatalf("read %s[%d]: a transaction stays open: %v", topic, partition, ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	var out []*kgo.Record
	if end == 0 {
		return out
	}
	// Control records are kept so that the read can end on the commit
	// marker that may be the partition's last offset.
	cl := rawClient(t, brokers, kgo.FetchIsolationLevel(iso), kgo.KeepControlRecords(),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {partition: kgo.NewOffset().AtStart()}}))
	for {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("read %s[%d]: %v (at %d records of offsets below %d)", topic, partition, err, len(out), end)
		}
		fs.EachError(func(_ string, _ int32, err error) { t.Logf("read %s[%d]: %v", topic, partition, err) })
		last := int64(-1)
		fs.EachRecord(func(r *kgo.Record) {
			last = r.Offset
			if !r.Attrs.IsControl() {
				out = append(out, r)
			}
		})
		if last >= end-1 {
			return out
		}
	}
}

// topicConfig reads one of topic's settings.
func topicConfig(ctx context.Context, t *testing.T, brokers, topic, key string) string {
	t.Helper()
	rcs, err := admin(t, brokers).DescribeTopicConfigs(ctx, topic)
	if err != nil {
		t.Fatalf("describe %s: %v", topic, err)
	}
	rc, err := rcs.On(topic, nil)
	if err != nil || rc.Err != nil {
		t.Fatalf("describe %s: %v, %v", topic, err, rc.Err)
	}
	for _, c := range rc.Configs {
		if c.Key == key {
			return c.MaybeValue()
		}
	}
	t.Fatalf("%s has no setting %s", topic, key)
	return ""
}

// topicMaxBytes reads a topic's max.message.bytes.
func topicMaxBytes(ctx context.Context, t *testing.T, brokers, topic string) int {
	t.Helper()
	n, err := strconv.Atoi(topicConfig(ctx, t, brokers, topic, "max.message.bytes"))
	if err != nil {
		t.Fatalf("max.message.bytes of %s: %v", topic, err)
	}
	return n
}

// lowerMaxMessageBytes sets topic's max.message.bytes, as an operator would.
func lowerMaxMessageBytes(ctx context.Context, t *testing.T, brokers, topic string, limit int) {
	t.Helper()
	v := strconv.Itoa(limit)
	res, err := admin(t, brokers).AlterTopicConfigs(ctx, []kadm.AlterConfig{{Op: kadm.SetConfig, Name: "max.message.bytes", Value: &v}}, topic)
	if err == nil {
		_, err = res.On(topic, nil)
	}
	if err == nil {
		for _, r := range res {
			err = r.Err
		}
	}
	if err != nil {
		t.Fatalf("lower max.message.bytes of %s: %v", topic, err)
	}
}
