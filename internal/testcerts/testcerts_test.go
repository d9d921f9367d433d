package testcerts

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
)

func TestGenerateVerifies(t *testing.T) {
	f := Generate(t, t.TempDir())
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("%s holds no PEM certificate", f.CA)
	}
	server, err := tls.LoadX509KeyPair(f.ServerCert, f.ServerKey)
	if err != nil {
		t.Fatalf("server key pair: %v", err)
	}
	for _, name := range []string{"127.0.0.1", "::1", ServerName} {
		opts := x509.VerifyOptions{Roots: roots, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		if _, err := server.Leaf.Verify(opts); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}
	if _, err := server.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "example.com"}); err == nil {
		t.Error("server certificate verifies for example.com; want it limited to loopback")
	}
	client, err := tls.LoadX509KeyPair(f.ClientCert, f.ClientKey)
	if err != nil {
		t.Fatalf("client key pair: %v", err)
	}
	opts := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := client.Leaf.Verify(opts); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if client.Leaf.Subject.CommonName != ClientCommonName {
		t.Errorf("client common name %q, want %q", client.Leaf.Subject.CommonName, ClientCommonName)
	}
	// A second call must not reuse the first CA.
	g := Generate(t, t.TempDir())
	other, err := tls.LoadX509KeyPair(g.ServerCert, g.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "127.0.0.1"}); err == nil {
		t.Error("a second Generate's server certificate verifies against the first CA")
	}
}

func TestGenerateHosts(t *testing.T) {
	f := GenerateHosts(t, t.TempDir(), "aggregator.internal", "10.0.0.5")
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	server, err := tls.LoadX509KeyPair(f.ServerCert, f.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, ok := range map[string]bool{"aggregator.internal": true, "10.0.0.5": true, "127.0.0.1": false, ServerName: false} {
		_, err := server.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name})
		if (err == nil) != ok {
			t.Errorf("server certificate for %s: err %v; want valid=%v", name, err, ok)
		}
	}
}
