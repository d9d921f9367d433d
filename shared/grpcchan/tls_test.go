package grpcchan

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/internal/testcerts"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
)

const testJob = "sec-job"

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// startServer serves on a free loopback port until the test ends.
func startServer(t *testing.T, opt ServerOptions) *Server {
	t.Helper()
	opt.Addr, opt.Job = "127.0.0.1:0", testJob
	s, err := NewServer(opt)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dialClient(t *testing.T, opt ClientOptions) *Client {
	t.Helper()
	c, err := Dial(testCtx(t), opt)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func serverTLS(t *testing.T, f testcerts.Files, clientCA string) ServerOptions {
	t.Helper()
	cfg, err := ServerTLS(f.ServerCert, f.ServerKey, clientCA)
	if err != nil {
		t.Fatalf("ServerTLS: %v", err)
	}
	return ServerOptions{TLS: cfg}
}

func clientOpts(t *testing.T, s *Server, caFile, certFile, keyFile, serverName string) ClientOptions {
	t.Helper()
	cfg, err := ClientTLS(caFile, certFile, keyFile, serverName)
	if err != nil {
		t.Fatalf("ClientTLS: %v", err)
	}
	return ClientOptions{Addr: s.Addr(), Job: testJob, ClientID: "a", TLS: cfg}
}

// roundTrip publishes round 1, has c fetch it, and submits an update from
// clientID that the server receives and accepts.
func roundTrip(t *testing.T, s *Server, c *Client, clientID string) {
	t.Helper()
	ctx := testCtx(t)
	if err := s.Publish(ctx, &fdxv1.GlobalModel{Job: testJob, Round: 1}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	m, err := c.Model(ctx, 1)
	if err != nil || m.GetRound() != 1 || m.GetJob() != testJob {
		t.Fatalf("Model(1) = %v, %v; want round 1 of %s", m, err, testJob)
	}
	errc := make(chan error, 1)
	go func() {
		errc <- c.Submit(ctx, &fdxv1.Update{Job: testJob, ClientId: clientID, BaseRound: 1, NumExamples: 3})
	}()
	d, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	if d.Update.GetClientId() != clientID || d.Update.GetNumExamples() != 3 {
		t.Errorf("Next delivered %v; want client %s with 3 examples", d.Update, clientID)
	}
	d.Reply(nil)
	if err := <-errc; err != nil {
		t.Fatalf("Submit: %v", err)
	}
}

func TestTLSRoundTrip(t *testing.T) {
	f := testcerts.Generate(t, t.TempDir())
	s := startServer(t, serverTLS(t, f, ""))
	c := dialClient(t, clientOpts(t, s, f.CA, "", "", ""))
	roundTrip(t, s, c, "a")
}

func TestTLSServerName(t *testing.T) {
	f := testcerts.Generate(t, t.TempDir())
	s := startServer(t, serverTLS(t, f, ""))
	// The certificate names localhost, so overriding the name checked
	// while dialing the IP works...
	dialClient(t, clientOpts(t, s, f.CA, "", "", testcerts.ServerName))
	// ...and a name the certificate does not hold is refused.
	if c, err := Dial(testCtx(t), clientOpts(t, s, f.CA, "", "", "aggregator.example.com")); err == nil {
		c.Close()
		t.Fatal("Dial checking the server certificate for a name it lacks succeeded")
	}
}

func TestTLSUntrustedServer(t *testing.T) {
	f := testcerts.Generate(t, t.TempDir())
	other := testcerts.Generate(t, t.TempDir())
	s := startServer(t, serverTLS(t, f, ""))
	// Neither the system roots (empty CA file) nor another CA trust the
	// test CA's server certificate.
	for name, ca := range map[string]string{"system roots": "", "other CA": other.CA} {
		c, err := Dial(testCtx(t), clientOpts(t, s, ca, "", "", ""))
		if err == nil {
			c.Close()
			t.Errorf("Dial trusting %s succeeded; want a certificate error", name)
			continue
		}
		if !errors.Is(err, channel.ErrUnreachable) || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("Dial trusting %s: %v; want ErrUnreachable naming the certificate", name, err)
		}
	}
}

func TestMutualTLS(t *testing.T) {
	f := testcerts.Generate(t, t.TempDir())
	other := testcerts.Generate(t, t.TempDir())
	s := startServer(t, serverTLS(t, f, f.CA))
	for name, opt := range map[string]ClientOptions{
		"no client certificate":          clientOpts(t, s, f.CA, "", "", ""),
		"certificate from another CA":    clientOpts(t, s, f.CA, other.ClientCert, other.ClientKey, ""),
		"server certificate as a client": clientOpts(t, s, f.CA, f.ServerCert, f.ServerKey, ""),
	} {
		c, err := Dial(testCtx(t), opt)
		if err == nil {
			// With TLS 1.3 the server checks the client certificate
			// after the client's handshake ends, so a refusal may
			// surface only on the first call.
			_, err = c.Model(testCtx(t), 0)
			c.Close()
		}
		if err == nil {
			t.Errorf("%s: connection accepted; want it refused", name)
			continue
		}
		t.Logf("%s: %v", name, err)
		if !errors.Is(err, channel.ErrUnreachable) {
			t.Errorf("%s: %v; want ErrUnreachable", name, err)
		}
	}
	c := dialClient(t, clientOpts(t, s, f.CA, f.ClientCert, f.ClientKey, ""))
	roundTrip(t, s, c, "a")
}

func TestPlaintextClientToTLSServer(t *testing.T) {
	f := testcerts.Generate(t, t.TempDir())
	s := startServer(t, serverTLS(t, f, ""))
	ctx := testCtx(t)
	c, err := Dial(ctx, ClientOptions{Addr: s.Addr(), Job: testJob})
	if err == nil {
		c.Close()
		t.Fatal("plaintext Dial to a TLS server succeeded")
	}
	// The refusal must come from the transport, not from running out of
	// time, so that a misconfigured client fails fast.
	if !errors.Is(err, channel.ErrUnreachable) || ctx.Err() != nil {
		t.Fatalf("plaintext Dial: %v (ctx %v); want ErrUnreachable before the deadline", err, ctx.Err())
	}
}

func TestTLSClientToPlaintextServer(t *testing.T) {
	f := testcerts.Generate(t, t.TempDir())
	s := startServer(t, ServerOptions{})
	c, err := Dial(testCtx(t), clientOpts(t, s, f.CA, "", "", ""))
	if err == nil {
		c.Close()
		t.Fatal("TLS Dial to a plaintext server succeeded")
	}
	if !errors.Is(err, channel.ErrUnreachable) {
		t.Fatalf("TLS Dial to a plaintext server: %v; want ErrUnreachable", err)
	}
}

func TestTLSConfigErrors(t *testing.T) {
	f := testcerts.Generate(t, t.TempDir())
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pem")
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	cfg, err := ServerTLS(f.ServerCert, f.ServerKey, f.CA)
	if err != nil {
		t.Fatalf("ServerTLS: %v", err)
	}
	if cfg.MinVersion < tls.VersionTLS12 || cfg.ClientCAs == nil || cfg.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("ServerTLS with a client CA: min version %#x, client auth %v; want TLS 1.2+, RequireAndVerifyClientCert", cfg.MinVersion, cfg.ClientAuth)
	}
	if cfg, err := ServerTLS(f.ServerCert, f.ServerKey, ""); err != nil {
		t.Errorf("ServerTLS without a client CA: %v", err)
	} else if cfg.ClientAuth != tls.NoClientCert {
		t.Errorf("ServerTLS without a client CA: client auth %v; want NoClientCert", cfg.ClientAuth)
	}
	if cfg, err := ClientTLS("", "", "", ""); err != nil || cfg.RootCAs != nil || cfg.MinVersion < tls.VersionTLS12 {
		t.Errorf("ClientTLS with no files = %+v, %v; want system roots (nil RootCAs), TLS 1.2+", cfg, err)
	}

	for _, tc := range []struct {
		name string
		call func() error
		want string // must appear in the error
	}{
		{"server cert missing", func() error { _, err := ServerTLS(missing, f.ServerKey, ""); return err }, missing},
		{"server key missing", func() error { _, err := ServerTLS(f.ServerCert, missing, ""); return err }, missing},
		{"server cert empty", func() error { _, err := ServerTLS("", f.ServerKey, ""); return err }, "certificate file"},
		{"server key mismatch", func() error { _, err := ServerTLS(f.ServerCert, f.ClientKey, ""); return err }, f.ClientKey},
		{"client CA missing", func() error { _, err := ServerTLS(f.ServerCert, f.ServerKey, missing); return err }, missing},
		{"client CA not PEM", func() error { _, err := ServerTLS(f.ServerCert, f.ServerKey, notPEM); return err }, notPEM},
		{"server CA missing", func() error { _, err := ClientTLS(missing, "", "", ""); return err }, missing},
		{"server CA not PEM", func() error { _, err := ClientTLS(notPEM, "", "", ""); return err }, notPEM},
		{"client cert without key", func() error { _, err := ClientTLS(f.CA, f.ClientCert, "", ""); return err }, "key file"},
		{"client key missing", func() error { _, err := ClientTLS(f.CA, f.ClientCert, missing, ""); return err }, missing},
	} {
		err := tc.call()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v; want one containing %q", tc.name, err, tc.want)
		}
	}
}
