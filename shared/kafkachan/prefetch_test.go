package kafkachan

import (
	"testing"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// TestUpdatesConsumerBoundsPrefetch checks the settings that keep the
// aggregator's memory flat in the number of clients: for the smallest
// records and for the largest chunks, the prefetch queue holds two whole
// fetches (one in flight while the round loop works on the other), stays
// below librdkafka's 64 MiB default for ordinary models, backs off less
// than the 1 s default when full, and librdkafka accepts every value (the
// linked version knows the properties and their ranges).
func TestUpdatesConsumerBoundsPrefetch(t *testing.T) {
	for _, maxBytes := range []int{fetchBytes(MinMessageBytes, MinMessageBytes), fetchBytes(1<<30, 64<<20+recordOverhead)} {
		cm := updatesConsumerConfig(aggregatorRole("prefetch"), maxBytes)
		queued := cm["queued.max.messages.kbytes"].(int) << 10
		fetchMax := cm["fetch.max.bytes"].(int)
		if queued < 2*fetchMax {
			t.Errorf("records of %d bytes: prefetch queue %d bytes holds less than two fetches of %d", maxBytes, queued, fetchMax)
		}
		if maxBytes == MinMessageBytes && queued >= 64<<20 {
			t.Errorf("records of %d bytes: prefetch queue %d bytes is not below librdkafka's 64 MiB default", maxBytes, queued)
		}
		if b := cm["fetch.queue.backoff.ms"].(int); b < 1 || b >= 1000 {
			t.Errorf("fetch.queue.backoff.ms %d, want 1 to 999 (librdkafka's default 1000 starves a bounded queue)", b)
		}
		full := Options{Brokers: "127.0.0.1:1", Job: "prefetch"}.configMap(cm)
		c, err := kafka.NewConsumer(&full)
		if err != nil {
			t.Fatalf("records of %d bytes: librdkafka refuses the updates consumer's config: %v", maxBytes, err)
		}
		c.Close()
	}
}
