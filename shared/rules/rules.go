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

// MaxRounds bounds a job's rounds, so that no arithmetic on a round number
// read from the wire can overflow.
const MaxRounds = 1 << 20

// CheckModel checks what a reader can check of a global model without
// knowing its shapes: it belongs to job, and its round lies inside the job
// (1 to num_rounds+1, the final model's; a model that does not say how
// many rounds its job has may claim at most MaxRounds+1). A model that
// fails is ignored, never trained on or restored from.
func CheckModel(m *fdxv1.GlobalModel, job string) error {
	if m.GetJob() != job {
		return fmt.Errorf("model of job %q, want %q", m.GetJob(), job)
	}
	n := m.GetNumRounds()
	if n < 0 || n > MaxRounds {
		return fmt.Errorf("model claims %d rounds in its job, want 0 to %d", n, MaxRounds)
	}
	limit := n + 1
	if n == 0 {
		limit = MaxRounds + 1
	}
	if r := m.GetRound(); r < 1 || r > limit {
		return fmt.Errorf("model round %d outside the job's 1 to %d", r, limit)
	}
	if m.GetFinal() && n > 0 && m.GetRound() != n+1 {
		return fmt.Errorf("final model of round %d in a job of %d rounds", m.GetRound(), n)
	}
	return nil
}
