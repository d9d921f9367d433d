// Package rules holds the federation's domain rules that both sides of a
// channel must agree on: what a job id and a client id may be, the limits an
// update must respect, how a wire partition spec maps onto a data shard, and
// why an update can be rejected. It is the leaf every other FDxKafka package
// may import; it imports none of them but the wire format and the data sets,
// so the Cloud Function and the aggregator share these rules without either
// linking the other.
package rules

import (
	"fmt"
	"regexp"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
)

// Limits of an update. They live here, not in the aggregator's strategies,
// because the client must know them too (a client id is a Kafka key) and
// the validator enforces them once for every strategy.
const (
	// MaxClientIDLen bounds client ids: they become Kafka keys and log fields.
	MaxClientIDLen = 128
	// MaxWeight is the largest example count an update may claim. The
	// exact accumulator needs weight × float32 significand below 2^55, one
	// machine word.
	MaxWeight = 1<<31 - 1
	// MaxTermLog2 bounds every weighted value: |num_examples × x| <
	// 2^MaxTermLog2 (about 1.2e24), far above any model weight times example
	// count, and what keeps the exact accumulator from overflowing.
	MaxTermLog2 = 80
)

var jobPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// ValidateJob checks that job can name Kafka topics (fdx.<job>.model) and
// appear in URLs and logs unquoted.
func ValidateJob(job string) error {
	if !jobPattern.MatchString(job) {
		return fmt.Errorf("job id %q: want 1-128 characters of [A-Za-z0-9._-]", job)
	}
	return nil
}

// ValidateClientID checks a client id's length; any bytes are allowed, since
// ids come from deployments we do not control (numbers, UUIDs, e-mails).
func ValidateClientID(id string) error {
	if id == "" || len(id) > MaxClientIDLen {
		return fmt.Errorf("client id of %d bytes: want 1 to %d", len(id), MaxClientIDLen)
	}
	return nil
}

// PartitionSpec converts the wire partition spec into the data set's.
func PartitionSpec(p *fdxv1.PartitionSpec) dataset.PartitionSpec {
	return dataset.PartitionSpec{
		Scheme:          p.GetScheme(),
		NumPartitions:   int(p.GetNumPartitions()),
		Seed:            p.GetSeed(),
		Alpha:           p.GetAlpha(),
		ShardsPerClient: int(p.GetShardsPerClient()),
	}
}

// ProtoPartitionSpec converts a data set partition spec to the wire form.
func ProtoPartitionSpec(s dataset.PartitionSpec) *fdxv1.PartitionSpec {
	return &fdxv1.PartitionSpec{
		Scheme:          s.Scheme,
		NumPartitions:   int32(s.NumPartitions),
		Seed:            s.Seed,
		Alpha:           s.Alpha,
		ShardsPerClient: int32(s.ShardsPerClient),
	}
}
