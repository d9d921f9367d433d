package function

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fdxkafka/fdxkafka/client/participant"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
)

// The credentials of the deployment under test: a client token (gRPC
// bearer token, Kafka update MAC key) and a SASL/PLAIN login, sent in
// clear over SASL_PLAINTEXT so that a listener would see it.
const (
	testToken    = "tok0-secret"
	testPassword = "sasl-secret-pw"
)

func credentialedTransport() participant.Transport {
	return participant.Transport{
		Token: testToken,
		KafkaProperties: map[string]string{
			"security.protocol": "SASL_PLAINTEXT",
			"sasl.mechanisms":   "PLAIN",
			"sasl.username":     "client",
			"sasl.password":     testPassword,
		},
	}
}

// sniffer is a raw TCP listener standing in for a broker: it accepts
// every connection and keeps every byte it is sent.
type sniffer struct {
	l     net.Listener
	conns atomic.Int64
	mu    sync.Mutex
	bytes []byte
	wg    sync.WaitGroup
}

func newSniffer(t *testing.T) *sniffer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sniffer{l: l}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					c.SetReadDeadline(time.Now().Add(30 * time.Second))
					n, err := c.Read(buf)
					s.mu.Lock()
					s.bytes = append(s.bytes, buf[:n]...)
					s.mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return s
}

func (s *sniffer) addr() string { return s.l.Addr().String() }

func (s *sniffer) received() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.bytes...)
}

// countingListener counts the connections a gRPC server accepts.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// rogueGRPC is a gRPC server that answers health checks, as an
// aggregator would, and records every authorization header it is sent.
type rogueGRPC struct {
	addr  string
	conns atomic.Int64
	mu    sync.Mutex
	auth  []string
}

func newRogueGRPC(t *testing.T) *rogueGRPC {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &rogueGRPC{addr: l.Addr().String()}
	note := func(ctx context.Context) {
		md, _ := metadata.FromIncomingContext(ctx)
		r.mu.Lock()
		r.auth = append(r.auth, md.Get("authorization")...)
		r.mu.Unlock()
	}
	gs := grpc.NewServer(
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			note(ctx)
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			note(ss.Context())
			return h(srv, ss)
		}))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	// Every call reaches the interceptor, which is all the rogue needs.
	fdxv1.RegisterAggregatorServer(gs, fdxv1.UnimplementedAggregatorServer{})
	go gs.Serve(countingListener{l, &r.conns})
	t.Cleanup(gs.Stop)
	return r
}

func (r *rogueGRPC) headers() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.auth...)
}

// TestCredentialsStayHome checks that a function holding credentials
// dials only the brokers it was deployed for: a request naming another
// address is refused with 403 naming the broker field, and neither a rogue
// gRPC aggregator nor a rogue Kafka broker sees a connection, let alone a
// token or a password.
func TestCredentialsStayHome(t *testing.T) {
	rogue := newRogueGRPC(t)
	rogueKafka := newSniffer(t)
	home := newSniffer(t) // an allowed Kafka broker that never answers
	s := NewServer(Config{Defaults: Defaults{Broker: "127.0.0.1:1"}, AllowedBrokers: []string{home.addr()},
		Transport: credentialedTransport()})

	for _, tc := range []struct{ name, channel, broker string }{
		{"rogue gRPC aggregator", "grpc", rogue.addr},
		{"rogue Kafka broker", "kafka", rogueKafka.addr()},
		{"rogue broker behind an allowed one", "kafka", home.addr() + "," + rogueKafka.addr()},
		{"rogue spelled as a gRPC target", "grpc", "dns:///" + rogue.addr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := post(t, s, fmt.Sprintf(`{"broker": %q, "channel": %q, "client_id": "0", "job": "x", "timeout_s": 2}`, tc.broker, tc.channel))
			msg, _ := out["error"].(string)
			if code != http.StatusForbidden || out["field"] != "broker" {
				t.Errorf("status %d field %v (%q); want 403 naming the broker field", code, out["field"], msg)
			}
			if !strings.Contains(msg, "not allowed") {
				t.Errorf("error %q does not say the broker is not allowed", msg)
			}
		})
	}
	// The refusals came before any dial: nothing reached either rogue.
	if n := rogue.conns.Load(); n != 0 {
		t.Errorf("rogue gRPC server accepted %d connections; want none (authorization headers %q)", n, rogue.headers())
	}
	if n := rogueKafka.conns.Load(); n != 0 {
		t.Errorf("rogue Kafka listener accepted %d connections; want none (received %q)", n, rogueKafka.received())
	}
	for _, h := range rogue.headers() {
		if strings.Contains(h, testToken) {
			t.Errorf("rogue gRPC server received the token: %q", h)
		}
	}
	if b := string(rogueKafka.received()); strings.Contains(b, testPassword) || strings.Contains(b, "client") {
		t.Errorf("rogue Kafka listener received credential bytes: %q", b)
	}
}

// TestCredentialsGoToAllowedBrokers checks that the allow-list lets
// through what it names: the deployment's gRPC aggregator (FDX_BROKER)
// serves an invocation end to end with its token, and a Kafka broker on
// FDX_ALLOWED_BROKERS is dialed.
func TestCredentialsGoToAllowedBrokers(t *testing.T) {
	srv, err := grpcchan.NewServer(grpcchan.ServerOptions{Addr: "127.0.0.1:0", Job: "x", Tokens: map[string]string{"0": testToken}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := srv.Publish(ctx, &fdxv1.GlobalModel{Job: "x", Round: 2, Final: true, PublishedAt: timestamppb.Now()}); err != nil {
		t.Fatal(err)
	}
	kafka := newSniffer(t)
	s := NewServer(Config{Defaults: Defaults{Broker: srv.Addr()}, AllowedBrokers: []string{kafka.addr()},
		Transport: credentialedTransport()})

	// The request may leave the broker out (FDX_BROKER) or name it.
	for _, body := range []string{
		`{"channel": "grpc", "client_id": "0", "job": "x", "timeout_s": 20}`,
		fmt.Sprintf(`{"broker": %q, "channel": "grpc", "client_id": "0", "job": "x", "timeout_s": 20}`, srv.Addr()),
	} {
		code, out := post(t, s, body)
		if code != http.StatusOK || out["final"] != true {
			t.Errorf("%s: status %d %v; want 200 with the final model", body, code, out)
		}
	}
	code, out := post(t, s, fmt.Sprintf(`{"broker": %q, "channel": "kafka", "client_id": "0", "job": "x", "timeout_s": 1}`, kafka.addr()))
	if code == http.StatusForbidden {
		t.Errorf("allowed Kafka broker refused: %d %v", code, out)
	}
	if kafka.conns.Load() == 0 {
		t.Errorf("allowed Kafka broker %s was never dialed (status %d %v)", kafka.addr(), code, out)
	}
}

// TestNoCredentialsAnyBroker checks the contract without credentials: a
// request may name any broker.
func TestNoCredentialsAnyBroker(t *testing.T) {
	other := newSniffer(t)
	s := NewServer(Config{Defaults: Defaults{Broker: "127.0.0.1:1"}})
	code, out := post(t, s, fmt.Sprintf(`{"broker": %q, "channel": "kafka", "client_id": "0", "job": "x", "timeout_s": 1}`, other.addr()))
	if code == http.StatusForbidden {
		t.Errorf("status 403 without credentials: %v", out)
	}
	if other.conns.Load() == 0 {
		t.Errorf("the named broker was never dialed (status %d %v)", code, out)
	}
}

// TestAllowListConfig checks the deployment settings: credentials with no
// broker to send them to, or an allow-list entry that is no host:port,
// are configuration errors; addresses compare by host (any case) and port.
func TestAllowListConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		msg  string // "" for no error
	}{
		{"token without brokers", map[string]string{"FDX_CLIENT_TOKEN": "t"}, "FDX_ALLOWED_BROKERS"},
		{"token with FDX_BROKER", map[string]string{"FDX_CLIENT_TOKEN": "t", "FDX_BROKER": "10.0.0.5:9092"}, ""},
		{"token with the allow-list", map[string]string{"FDX_CLIENT_TOKEN": "t", "FDX_ALLOWED_BROKERS": "a:1, b:2"}, ""},
		{"bad allow-list entry", map[string]string{"FDX_ALLOWED_BROKERS": "a:1,nonsense"}, "nonsense"},
		{"bad port", map[string]string{"FDX_ALLOWED_BROKERS": "a:99999"}, "99999"},
		{"no credentials, no brokers", map[string]string{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ConfigFromEnv(env(tc.env))
			switch {
			case tc.msg == "" && err != nil:
				t.Errorf("error %v; want none", err)
			case tc.msg != "" && (err == nil || !strings.Contains(err.Error(), tc.msg)):
				t.Errorf("error %v; want one mentioning %q", err, tc.msg)
			}
		})
	}
	cfg, err := ConfigFromEnv(env(map[string]string{"FDX_CLIENT_TOKEN": "t", "FDX_BROKER": "Broker-1.example:9092", "FDX_ALLOWED_BROKERS": "[::1]:9093"}))
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(cfg)
	for broker, ok := range map[string]bool{
		"broker-1.example:9092":             true,
		"BROKER-1.EXAMPLE:9092":             true,
		"[::1]:9093":                        true,
		"broker-1.example:9092,[::1]:9093":  true,
		"broker-1.example:9093":             false,
		"broker-1.example":                  false,
		"evil.example:9092":                 false,
		"broker-1.example:9092,evil:9092":   false,
		"broker-1.example:9092@evil:9092":   false,
		"broker-1.example:09092":            false,
		"broker-1.example:9092/../evil:1":   false,
		"unix:///var/run/broker-1.example":  false,
		"passthrough:///broker-1.example:1": false,
	} {
		err := s.checkBroker(Request{Broker: broker, Channel: participant.ChannelKafka})
		if (err == nil) != ok {
			t.Errorf("broker %q: err %v; want allowed %v", broker, err, ok)
		}
	}
}
