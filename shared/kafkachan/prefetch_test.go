package kafkachan

import (
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestUpdatesConsumerBoundsPrefetch checks the settings that keep the
// aggregator's memory flat in the number of clients and its wire as Kafka
// users know it, as kgo takes them: for the smallest records and for the
// largest chunks, one fetch holds a whole record, a fetch stays bounded
// (kgo buffers about two of them), a broker's reply of a full fetch is
// read, and the consumer is a static member of the job's group reading
// committed records only, committing nothing on its own.
func TestUpdatesConsumerBoundsPrefetch(t *testing.T) {
	rl := aggregatorRole("prefetch")
	for _, maxBytes := range []int{fetchBytes(MinMessageBytes, MinMessageBytes), fetchBytes(1<<30, 64<<20+recordOverhead)} {
		props, err := parseProperties(nil)
		if err != nil {
			t.Fatal(err)
		}
		opts, err := Options{Brokers: "127.0.0.1:1", Job: "prefetch"}.clientOpts(updatesConsumerOpts(rl, maxBytes, props, &groupEvents{})...)
		if err != nil {
			t.Fatal(err)
		}
		cl, err := kgo.NewClient(opts...)
		if err != nil {
			t.Fatalf("records of %d bytes: kgo refuses the updates consumer's options: %v", maxBytes, err)
		}
		fetchMax := cl.OptValue(kgo.FetchMaxBytes).(int32)
		partMax := cl.OptValue(kgo.FetchMaxPartitionBytes).(int32)
		readMax := cl.OptValue(kgo.BrokerMaxReadBytes).(int32)
		if int(partMax) < maxBytes || fetchMax < partMax {
			t.Errorf("records of %d bytes: fetches of %d bytes, %d per partition, do not hold one", maxBytes, fetchMax, partMax)
		}
		if fetchMax > 1<<30 || int(fetchMax) > 2*maxBytes {
			t.Errorf("records of %d bytes: fetches of %d bytes are not bounded by two records", maxBytes, fetchMax)
		}
		if readMax <= fetchMax {
			t.Errorf("records of %d bytes: a broker reply is read up to %d bytes, not above the fetch size %d", maxBytes, readMax, fetchMax)
		}
		if w := cl.OptValue(kgo.FetchMaxWait).(time.Duration); w <= 0 || w > time.Second {
			t.Errorf("fetch max wait %v; want a short one: the round loop waits on it", w)
		}
		if g := cl.OptValue(kgo.ConsumerGroup).(string); g != GroupID("prefetch") {
			t.Errorf("group %q, want %q", g, GroupID("prefetch"))
		}
		if id := cl.OptValue(kgo.InstanceID); id != GroupID("prefetch") {
			t.Errorf("group.instance.id %v, want %q (static membership)", id, GroupID("prefetch"))
		}
		// kgo reports the level as its wire value: 1 is read_committed.
		if iso := cl.OptValue(kgo.FetchIsolationLevel); iso != int8(1) {
			t.Errorf("isolation level %#v, want read_committed (1)", iso)
		}
		if cl.OptValue(kgo.DisableAutoCommit) != true {
			t.Error("auto commit is on; offsets must be committed only in the round transaction")
		}
		cl.Close()
	}
}
