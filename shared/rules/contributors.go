package rules

import (
	"crypto/sha256"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// MaxListedContributors is the largest number of contributors a model
// record lists by id. Every client downloads the record: at 100,000
// contributors the ids alone would be about 700 KB of each download, and a
// gRPC aggregator's fan-out would grow as N².
const MaxListedContributors = 1000

// ContributorsDigest is the SHA-256 of ids, sorted as given, each followed
// by a newline.
func ContributorsDigest(ids []string) []byte {
	h := sha256.New()
	for _, id := range ids {
		h.Write([]byte(id))
		h.Write([]byte{'\n'})
	}
	return h.Sum(nil)
}

// SetContributors records the sorted ids of a model's contributors in m:
// their count and digest always, the ids themselves up to
// MaxListedContributors.
func SetContributors(m *fdxv1.GlobalModel, ids []string) {
	m.NumContributors = int64(len(ids))
	m.ContributorsSha256 = ContributorsDigest(ids)
	m.Contributors = nil
	if len(ids) <= MaxListedContributors {
		m.Contributors = ids
	}
}
