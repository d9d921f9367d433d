package kafkachan

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/internal/testcerts"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/embedded"
)

const (
	scramUser = "fdx-aggregator"
	scramPass = "correct horse battery staple"
)

// secureBroker starts an embedded broker that speaks only TLS and admits
// only SCRAM-SHA-256 clients. It never uses FDX_KAFKA_BROKERS: the point is
// a broker whose security settings this test controls.
func secureBroker(t *testing.T) (addr string, certs testcerts.Files) {
	t.Helper()
	certs = testcerts.Generate(t, t.TempDir())
	cert, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatalf("broker certificate: %v", err)
	}
	b, err := embedded.Start(embedded.Options{
		Addr: "127.0.0.1:0",
		Extra: []kfake.Opt{
			kfake.EnableSASL(),
			kfake.Superuser("SCRAM-SHA-256", scramUser, scramPass),
			kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}),
		},
	})
	if err != nil {
		t.Fatalf("secure embedded broker: %v", err)
	}
	t.Cleanup(b.Close)
	return b.Addr(), certs
}

// saslSSL returns the librdkafka settings for the secure broker. The broker
// is dialed as 127.0.0.1, and its certificate carries that IP address as a
// subject alternative name, so hostname verification stays on.
func saslSSL(certs testcerts.Files, password string) map[string]string {
	return map[string]string{
		"security.protocol":                     "SASL_SSL",
		"sasl.mechanisms":                       "SCRAM-SHA-256",
		"sasl.username":                         scramUser,
		"sasl.password":                         password,
		"ssl.ca.location":                       certs.CA,
		"ssl.endpoint.identification.algorithm": "https",
	}
}

// secureRoundTrip publishes a model and passes one update through a broker
// reachable only with props.
func secureRoundTrip(t *testing.T, brokers string, props map[string]string) {
	t.Helper()
	job := kafkatest.Job(t)
	ctx := testCtx(t, 60*time.Second)
	opt := Options{Brokers: brokers, Job: job, Properties: props, Logger: testLogger(t)}
	s, err := NewServer(ctx, ServerOptions{Options: opt, TopicOptions: TopicOptions{UpdatePartitions: 1}})
	if err != nil {
		t.Fatalf("NewServer over SASL_SSL: %v", err)
	}
	defer s.Close()
	if err := s.Publish(ctx, model(job, 1, 4)); err != nil {
		t.Fatalf("Publish over SASL_SSL: %v", err)
	}
	c, err := Dial(ctx, ClientOptions{Options: opt})
	if err != nil {
		t.Fatalf("Dial over SASL_SSL: %v", err)
	}
	defer c.Close()
	if m, err := c.Model(ctx, 1); err != nil || m.GetRound() != 1 {
		t.Fatalf("Model over SASL_SSL = round %d, %v; want round 1", m.GetRound(), err)
	}
	if err := c.Submit(ctx, &fdxv1.Update{Job: job, ClientId: "a", BaseRound: 1, NumExamples: 7}); err != nil {
		t.Fatalf("Submit over SASL_SSL: %v", err)
	}
	d, err := s.Next(ctx)
	if err != nil || d.Update.GetClientId() != "a" || d.Update.GetNumExamples() != 7 {
		t.Fatalf("Next over SASL_SSL = %+v, %v; want a's update of 7 examples", d.Update, err)
	}
}

func TestSASLSSLRoundTrip(t *testing.T) {
	brokers, certs := secureBroker(t)
	secureRoundTrip(t, brokers, saslSSL(certs, scramPass))
}

// TestSASLSSLPropertiesFile passes the same settings the way operators do,
// through a librdkafka properties file.
func TestSASLSSLPropertiesFile(t *testing.T) {
	brokers, certs := secureBroker(t)
	var b strings.Builder
	b.WriteString("# Kafka client security for FDxKafka\n\n")
	for k, v := range saslSSL(certs, scramPass) {
		fmt.Fprintf(&b, "%s = %s\n", k, v)
	}
	path := filepath.Join(t.TempDir(), "client.properties")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	props, err := LoadProperties(path)
	if err != nil {
		t.Fatalf("LoadProperties: %v", err)
	}
	// The password has spaces: it must come back whole.
	if props["sasl.password"] != scramPass || props["security.protocol"] != "SASL_SSL" {
		t.Fatalf("LoadProperties = %v; want the written settings", props)
	}
	secureRoundTrip(t, brokers, props)
}

// TestSASLSSLRefused checks that wrong credentials or an untrusted broker
// certificate fail both sides within the caller's deadline instead of
// hanging while librdkafka retries.
func TestSASLSSLRefused(t *testing.T) {
	brokers, certs := secureBroker(t)
	other := testcerts.Generate(t, t.TempDir())
	wrongCA := saslSSL(certs, scramPass)
	wrongCA["ssl.ca.location"] = other.CA
	plaintext := saslSSL(certs, scramPass)
	plaintext["security.protocol"] = "SASL_PLAINTEXT"
	for name, props := range map[string]map[string]string{
		"wrong password":       saslSSL(certs, "wrong password"),
		"untrusted broker":     wrongCA,
		"SASL without TLS":     plaintext,
		"no security settings": nil,
	} {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			const limit = 10 * time.Second
			opt := Options{Brokers: brokers, Job: kafkatest.Job(t), Properties: props, Logger: testLogger(t)}

			start := time.Now()
			s, err := NewServer(testCtx(t, limit), ServerOptions{Options: opt})
			if err == nil {
				s.Close()
				t.Errorf("NewServer with %s succeeded", name)
			}
			if el := time.Since(start); el > 2*limit {
				t.Errorf("NewServer with %s took %v; want it bounded by its %v deadline", name, el, limit)
			}
			t.Logf("NewServer: %v", err)

			start = time.Now()
			c, err := Dial(testCtx(t, limit), ClientOptions{Options: opt})
			if err == nil {
				c.Close()
				t.Errorf("Dial with %s succeeded", name)
			}
			if el := time.Since(start); el > 2*limit {
				t.Errorf("Dial with %s took %v; want it bounded by its %v deadline", name, el, limit)
			}
			t.Logf("Dial: %v", err)
		})
	}
}

// testLogger sends librdkafka's lines to the test log, where a failed
// handshake explains itself.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
