// Package kafkatest gives tests a Kafka broker: the real one named by
// FDX_KAFKA_BROKERS when set (CI starts one with deploy/kafka/kafka.sh),
// otherwise a fresh embedded broker per test. Tests get their own job id so
// that runs against a shared real broker never see each other's topics.
package kafkatest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/fdxkafka/fdxkafka/shared/embedded"
)

// EnvBrokers names the environment variable that selects a real broker.
const EnvBrokers = "FDX_KAFKA_BROKERS"

// Real reports whether tests run against an external broker.
func Real() bool { return os.Getenv(EnvBrokers) != "" }

// Brokers returns a bootstrap list for t.
func Brokers(t testing.TB) string {
	t.Helper()
	if b := os.Getenv(EnvBrokers); b != "" {
		return b
	}
	b, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("embedded broker: %v", err)
	}
	t.Cleanup(b.Close)
	return b.Addr()
}

// Job returns a job id unique to this test run.
func Job(t testing.TB) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := strings.NewReplacer("/", "-", " ", "-", "#", "-").Replace(t.Name())
	if len(name) > 80 {
		name = name[:80]
	}
	return name + "-" + hex.EncodeToString(b[:])
}
