package kafkachan

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/internal/logtest"
	"github.com/fdxkafka/fdxkafka/internal/testcerts"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/embedded"
)

const (
	scramUser = "fdx-aggregator"
	scramPass = "correct horse battery staple"
)

// secureBroker starts an embedded broker that speaks only TLS and admits
// only SCRAM-SHA-256 clients, with a certificate for 127.0.0.1 (and
// localhost). It never uses FDX_KAFKA_BROKERS: the point is a broker whose
// security settings this test controls.
func secureBroker(t *testing.T) (addr string, certs testcerts.Files) {
	t.Helper()
	return secureBrokerWith(t, testcerts.Generate(t, t.TempDir()))
}

func secureBrokerWith(t *testing.T, certs testcerts.Files) (addr string, _ testcerts.Files) {
	t.Helper()
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

// saslSSL returns the Kafka client settings for the secure broker. The broker
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
// through a Kafka properties file.
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
// fail both sides within the caller's deadline instead of hanging while the
// Kafka client retries, and that the error and the client's log lines (at
// the default warn level, through slog) say why.
func TestSASLSSLRefused(t *testing.T) {
	brokers, certs := secureBroker(t)
	// A broker whose certificate, from the trusted CA, names another host:
	// refused only because the client checks the name it dialed.
	otherHost, otherHostCerts := secureBrokerWith(t, testcerts.GenerateHosts(t, t.TempDir(), "kafka.example.com"))
	untrusted := saslSSL(certs, scramPass)
	untrusted["ssl.ca.location"] = testcerts.Generate(t, t.TempDir()).CA
	noTLS := saslSSL(certs, scramPass)
	noTLS["security.protocol"] = "SASL_PLAINTEXT"
	delete(noTLS, "ssl.ca.location")
	delete(noTLS, "ssl.endpoint.identification.algorithm")
	noHostCheck := saslSSL(otherHostCerts, scramPass)
	noHostCheck["ssl.endpoint.identification.algorithm"] = "none"

	// Controls: both brokers are up and admit a correctly configured
	// client, so each refusal below has the one cause the case names.
	for _, ok := range []struct {
		brokers string
		props   map[string]string
	}{{brokers, saslSSL(certs, scramPass)}, {otherHost, noHostCheck}} {
		c, err := Dial(testCtx(t, 30*time.Second), ClientOptions{Options: Options{Brokers: ok.brokers, Job: kafkatest.Job(t), Properties: ok.props}})
		if err != nil {
			t.Fatalf("control Dial %s: %v", ok.brokers, err)
		}
		c.Close()
	}

	for _, tc := range []struct {
		name    string
		brokers string
		props   map[string]string
		log     string // the error and the log must say this; empty checks nothing
	}{
		// kfake drops the connection on a wrong SCRAM proof instead of
		// answering SASL_AUTHENTICATION_FAILED as Kafka does: the refusal
		// by name is checked on the real secure broker (TestACLs).
		{"wrong password", brokers, saslSSL(certs, "wrong password"), ""},
		{"untrusted CA", brokers, untrusted, "certificate signed by unknown authority"},
		{"wrong host name", otherHost, saslSSL(otherHostCerts, scramPass), "doesn't contain any IP SANs"},
		{"SASL without TLS", brokers, noTLS, ""},
		{"no security settings", brokers, nil, ""},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			// Each side waits out its whole deadline: a refused
			// handshake may be a broker that is restarting.
			const deadline, limit = 3 * time.Second, 20 * time.Second
			var logs logtest.SyncBuffer
			opt := Options{
				Brokers: tc.brokers, Job: kafkatest.Job(t), Properties: tc.props,
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
			}

			start := time.Now()
			s, err := NewServer(testCtx(t, deadline), ServerOptions{Options: opt})
			if err == nil {
				s.Close()
				t.Errorf("NewServer with %s succeeded", tc.name)
			}
			if el := time.Since(start); el > limit {
				t.Errorf("NewServer with %s took %v; want it bounded by its %v deadline", tc.name, el, deadline)
			}
			t.Logf("NewServer: %v", err)

			start = time.Now()
			c, err := Dial(testCtx(t, deadline), ClientOptions{Options: opt})
			if err == nil {
				c.Close()
				t.Errorf("Dial with %s succeeded", tc.name)
			} else if !errors.Is(err, channel.ErrUnreachable) {
				t.Errorf("Dial with %s: %v; want ErrUnreachable", tc.name, err)
			}
			if el := time.Since(start); el > limit {
				t.Errorf("Dial with %s took %v; want it bounded by its %v deadline", tc.name, el, deadline)
			}
			t.Logf("Dial: %v", err)
			if err != nil && !strings.Contains(err.Error(), tc.log) {
				t.Errorf("Dial's error does not say %q: %v", tc.log, err)
			}

			got := logs.String()
			if !strings.Contains(got, tc.log) {
				t.Errorf("the Kafka client's log does not say %q:\n%s", tc.log, got)
			}
			if tc.log != "" && !strings.Contains(got, "component=kafka-client") {
				t.Errorf("the Kafka client's lines are not marked as its own:\n%s", got)
			}
		})
	}
}

// testLogger collects the Kafka client's warnings and errors and shows
// them if the test fails, where a failed handshake explains itself. It
// buffers rather than calling t.Log directly because the client may still
// log after the test has ended.
func testLogger(t *testing.T) *slog.Logger {
	var buf logtest.SyncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Kafka client log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
