package kafkachan

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"

	"github.com/fdxkafka/fdxkafka/internal/logtest"
	"github.com/fdxkafka/fdxkafka/internal/testcerts"
)

// propsClient builds a kgo client from props as the channel does, without
// connecting anywhere.
func propsClient(t *testing.T, props map[string]string) *kgo.Client {
	t.Helper()
	opts, err := Options{Brokers: "127.0.0.1:1", Job: "props", Properties: props}.clientOpts()
	if err != nil {
		t.Fatalf("clientOpts(%v): %v", props, err)
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatalf("kgo refuses the options of %v: %v", props, err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// TestPropertiesMapping checks what each accepted combination of Kafka
// properties turns into: TLS or not, which SASL mechanism, the client id,
// the brokers, the tuning keys.
func TestPropertiesMapping(t *testing.T) {
	certs := testcerts.Generate(t, t.TempDir())
	for _, tc := range []struct {
		name  string
		props map[string]string
		tls   bool
		mech  string // "" for no SASL
	}{
		{"none", nil, false, ""},
		{"PLAINTEXT", map[string]string{"security.protocol": "PLAINTEXT"}, false, ""},
		{"SSL", map[string]string{"security.protocol": "SSL", "ssl.ca.location": certs.CA}, true, ""},
		{"SSL lower case, system CAs", map[string]string{"security.protocol": "ssl"}, true, ""},
		{"mutual TLS", map[string]string{"security.protocol": "SSL", "ssl.ca.location": certs.CA,
			"ssl.certificate.location": certs.ServerCert, "ssl.key.location": certs.ServerKey}, true, ""},
		{"SASL_PLAINTEXT PLAIN", map[string]string{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
			"sasl.username": "u", "sasl.password": "p"}, false, "PLAIN"},
		{"SASL_PLAINTEXT default mechanism", map[string]string{"security.protocol": "SASL_PLAINTEXT",
			"sasl.username": "u", "sasl.password": "p"}, false, "PLAIN"},
		{"SASL_PLAINTEXT SCRAM-SHA-256, librdkafka's key", map[string]string{"security.protocol": "SASL_PLAINTEXT",
			"sasl.mechanisms": "SCRAM-SHA-256", "sasl.username": "u", "sasl.password": "p"}, false, "SCRAM-SHA-256"},
		{"SASL_SSL SCRAM-SHA-512", map[string]string{"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
			"sasl.username": "u", "sasl.password": "p", "ssl.ca.location": certs.CA}, true, "SCRAM-SHA-512"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := propsClient(t, tc.props)
			cfg, _ := cl.OptValue(kgo.DialTLSConfig).(*tls.Config)
			if (cfg != nil) != tc.tls {
				t.Errorf("TLS config %v; want TLS %v", cfg != nil, tc.tls)
			}
			if cfg != nil && tc.props["ssl.ca.location"] != "" && cfg.RootCAs == nil {
				t.Error("ssl.ca.location given but no CA pool set")
			}
			if cfg != nil && tc.props["ssl.certificate.location"] != "" && len(cfg.Certificates) != 1 {
				t.Errorf("%d client certificates; want 1", len(cfg.Certificates))
			}
			mechs, _ := cl.OptValue(kgo.SASL).([]sasl.Mechanism)
			var names []string
			for _, m := range mechs {
				names = append(names, m.Name())
			}
			if want := tc.mech; (want == "" && len(names) != 0) || (want != "" && (len(names) != 1 || names[0] != want)) {
				t.Errorf("SASL mechanisms %v; want %q", names, want)
			}
		})
	}

	cl := propsClient(t, map[string]string{
		"bootstrap.servers": "127.0.0.1:21,127.0.0.1:22", "client.id": "fdx-test",
		"socket.connection.setup.timeout.ms": "1500", "metadata.max.age.ms": "60000",
	})
	if got := cl.OptValue(kgo.ClientID); got != "fdx-test" {
		t.Errorf("client id %v; want fdx-test", got)
	}
	if got := cl.OptValue(kgo.SeedBrokers).([]string); strings.Join(got, ",") != "127.0.0.1:21,127.0.0.1:22" {
		t.Errorf("seed brokers %v; want bootstrap.servers's, not the command line's", got)
	}
	if got := cl.OptValue(kgo.DialTimeout); got != 1500*time.Millisecond {
		t.Errorf("dial timeout %v; want 1.5s", got)
	}
	if got := cl.OptValue(kgo.MetadataMaxAge); got != time.Minute {
		t.Errorf("metadata max age %v; want 1m", got)
	}
	props, err := parseProperties(map[string]string{"session.timeout.ms": "30000", "heartbeat.interval.ms": "3000"})
	if err != nil || props.sessionTimeout != 30*time.Second || props.heartbeat != 3*time.Second {
		t.Errorf("group settings %+v, %v; want 30s session, 3s heartbeat", props, err)
	}
}

// TestPropertiesRefused: an unknown key, a bad value or a contradiction is
// an error that names the key, never the secret it may hold.
func TestPropertiesRefused(t *testing.T) {
	const secret = "s3cret-value"
	for _, tc := range []struct {
		name  string
		props map[string]string
		want  string
	}{
		{"unknown key", map[string]string{"sasl.jaas.config": secret}, `"sasl.jaas.config" is not supported`},
		{"typo", map[string]string{"security.protocl": "SSL"}, `"security.protocl" is not supported`},
		{"librdkafka-only key", map[string]string{"enable.idempotence": "true"}, `"enable.idempotence" is not supported`},
		{"protocol", map[string]string{"security.protocol": "SASL_TLS"}, "security.protocol"},
		{"mechanism", map[string]string{"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI",
			"sasl.username": "u", "sasl.password": secret}, "sasl.mechanism"},
		{"mechanisms disagree", map[string]string{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
			"sasl.mechanisms": "SCRAM-SHA-256", "sasl.username": "u", "sasl.password": secret}, "disagree"},
		{"no password", map[string]string{"security.protocol": "SASL_PLAINTEXT", "sasl.username": "u"}, "sasl.password"},
		{"SASL user without SASL", map[string]string{"sasl.username": "u", "sasl.password": secret}, "sasl.username"},
		{"TLS file without TLS", map[string]string{"security.protocol": "SASL_PLAINTEXT", "sasl.username": "u",
			"sasl.password": secret, "ssl.ca.location": "/ca.pem"}, "ssl.ca.location"},
		{"missing CA file", map[string]string{"security.protocol": "SSL", "ssl.ca.location": "/nonexistent/ca.pem"}, "ssl.ca.location"},
		{"certificate without key", map[string]string{"security.protocol": "SSL", "ssl.certificate.location": "/dev/null"}, "ssl.key"},
		{"milliseconds", map[string]string{"session.timeout.ms": "10s"}, "session.timeout.ms"},
		{"log level", map[string]string{"log.level": "loud"}, "log.level"},
		{"host check", map[string]string{"security.protocol": "SSL", "ssl.endpoint.identification.algorithm": "dns"},
			"ssl.endpoint.identification.algorithm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseProperties(tc.props)
			if err == nil {
				t.Fatalf("parseProperties(%v) accepted", tc.props)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q shows a secret value", err)
			}
		})
	}
}

// TestLoadProperties reads a properties file as operators write one:
// comments, blank lines, spaces around '=' and inside values; a file with
// an unknown key is refused with the file's name and the key.
func TestLoadProperties(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "client.properties")
	if err := os.WriteFile(good, []byte("# Kafka client\n\nsecurity.protocol = SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n"+
		"sasl.username=fdx\nsasl.password = two words\nclient.id=fdx-agg\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	props, err := LoadProperties(good)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
		"sasl.username": "fdx", "sasl.password": "two words", "client.id": "fdx-agg"}
	if len(props) != len(want) {
		t.Errorf("LoadProperties = %v; want %v", props, want)
	}
	for k, v := range want {
		if props[k] != v {
			t.Errorf("%s = %q; want %q", k, props[k], v)
		}
	}

	bad := filepath.Join(dir, "bad.properties")
	if err := os.WriteFile(bad, []byte("security.protocol=PLAINTEXT\nacks=all\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadProperties(bad); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), `"acks"`) {
		t.Errorf("LoadProperties of a file with acks = %v; want an error naming the file and the key", err)
	}
	noEq := filepath.Join(dir, "noeq.properties")
	if err := os.WriteFile(noEq, []byte("security.protocol PLAINTEXT\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadProperties(noEq); err == nil || !strings.Contains(err.Error(), noEq+":1") {
		t.Errorf("LoadProperties of a line without '=' = %v; want the file and line", err)
	}
}

// TestKafkaClientLogsThroughSlog: the Kafka client's lines reach the
// channel's slog logger, marked component=kafka-client, at warn and above
// by default, and at debug when log.level asks for it.
func TestKafkaClientLogsThroughSlog(t *testing.T) {
	for _, tc := range []struct {
		level     string
		wantDebug bool
	}{{"", false}, {"debug", true}} {
		var logs logtest.SyncBuffer
		props := map[string]string{}
		if tc.level != "" {
			props["log.level"] = tc.level
		}
		o := Options{Brokers: "127.0.0.1:1", Job: "logs", Properties: props,
			Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		// Nothing listens on port 1: the client logs its failed dials.
		_, err := Dial(ctx, ClientOptions{Options: o})
		cancel()
		if err == nil {
			t.Fatal("Dial of a closed port succeeded")
		}
		got := logs.String()
		if !strings.Contains(got, "component=kafka-client") || !strings.Contains(got, "level=WARN") {
			t.Errorf("log.level %q: no warning of the Kafka client in the log:\n%s", tc.level, got)
		}
		if hasDebug := strings.Contains(got, "level=DEBUG msg="); hasDebug != tc.wantDebug {
			t.Errorf("log.level %q: debug lines %v; want %v:\n%.2000s", tc.level, hasDebug, tc.wantDebug, got)
		}
	}
}

// envQuietChild makes TestKafkaClientQuietOnStderr the child process.
const envQuietChild = "FDX_TEST_KAFKA_QUIET_CHILD"

// TestKafkaClientQuietOnStderr runs a client and a server against a closed
// port, with the Kafka client at its most verbose but no logger, in a child
// process, and checks that nothing reached the process's stderr: the
// Kafka client writes nowhere but to the logger it is given.
func TestKafkaClientQuietOnStderr(t *testing.T) {
	if os.Getenv(envQuietChild) != "" {
		o := Options{Brokers: "127.0.0.1:1", Job: "quiet", Properties: map[string]string{"log.level": "debug"}}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := Dial(ctx, ClientOptions{Options: o}); err == nil {
			t.Fatal("Dial of a closed port succeeded")
		}
		if _, err := NewServer(ctx, ServerOptions{Options: o}); err == nil {
			t.Fatal("NewServer on a closed port succeeded")
		}
		return
	}
	ctx := testCtx(t, 60*time.Second)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestKafkaClientQuietOnStderr$", "-test.count=1")
	cmd.Env = append(os.Environ(), envQuietChild+"=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("child: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "PASS") {
		t.Fatalf("the child did not run the test:\n%s", stdout.String())
	}
	if stderr.Len() != 0 {
		t.Errorf("the Kafka client wrote to stderr:\n%s", stderr.String())
	}
}
