// Package testcerts writes a throwaway certificate authority and certificates
// signed by it, so that tests exercise real TLS and mutual TLS on loopback
// without checked-in keys that would expire or leak into production use.
package testcerts

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// ServerName is the DNS name in the server certificate besides the loopback
// IP addresses, for tests that dial by name or override the TLS server name.
const ServerName = "localhost"

// ClientCommonName is the subject common name of the client certificate.
const ClientCommonName = "fdx-test-client"

// Files are the paths of the PEM files Generate writes.
type Files struct {
	// CA is the certificate of the authority that signed both certificates.
	CA string
	// ServerCert and ServerKey are valid for 127.0.0.1, ::1 and localhost
	// (Generate) or for the hosts given to GenerateHosts.
	ServerCert, ServerKey string
	// ClientCert and ClientKey identify a client for mutual TLS.
	ClientCert, ClientKey string
}

// Generate creates a new CA, a server certificate for 127.0.0.1, ::1 and
// localhost, and a client certificate, and writes them as PEM files into dir.
// Keys are unencrypted PKCS #8 so that Go, OpenSSL and Java (a Kafka broker) read
// them. Every call makes new keys: tests never trust each other's CA.
func Generate(t testing.TB, dir string) Files {
	t.Helper()
	return GenerateHosts(t, dir, "127.0.0.1", "::1", ServerName)
}

// GenerateHosts is Generate with a server certificate valid only for hosts
// (IP addresses or DNS names), for tests that check a client really
// verifies the name it dialed.
func GenerateHosts(t testing.TB, dir string, hosts ...string) Files {
	t.Helper()
	f, err := generate(dir, time.Now(), hosts)
	if err != nil {
		t.Fatalf("testcerts: %v", err)
	}
	return f
}

// Write is GenerateHosts for programs: scripts/test.sh gives the secure
// broker of deploy/kafka/kafka.sh a TLS listener with it (through
// internal/testcerts/cmd/testcerts). Without hosts the server certificate
// is Generate's.
func Write(dir string, hosts ...string) (Files, error) {
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1", "::1", ServerName}
	}
	return generate(dir, time.Now(), hosts)
}

func generate(dir string, now time.Time, hosts []string) (Files, error) {
	f := Files{
		CA:         filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "server.pem"),
		ServerKey:  filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"),
		ClientKey:  filepath.Join(dir, "client-key.pem"),
	}
	// A small backdate tolerates clock differences between the test and
	// the TLS peers, which all run on this host but may read the clock
	// at slightly different times.
	notBefore, notAfter := now.Add(-time.Hour), now.Add(24*time.Hour)

	caKey, err := newKey()
	if err != nil {
		return Files{}, err
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "fdx-test-ca"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, caCert, err := sign(caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return Files{}, fmt.Errorf("self-sign CA: %w", err)
	}
	if err := writePEM(f.CA, "CERTIFICATE", caDER); err != nil {
		return Files{}, err
	}

	leaves := []struct {
		tmpl          *x509.Certificate
		cert, keyPath string
	}{
		{serverTemplate(hosts), f.ServerCert, f.ServerKey},
		{&x509.Certificate{
			Subject:     pkix.Name{CommonName: ClientCommonName},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, f.ClientCert, f.ClientKey},
	}
	for _, l := range leaves {
		key, err := newKey()
		if err != nil {
			return Files{}, err
		}
		l.tmpl.NotBefore, l.tmpl.NotAfter = notBefore, notAfter
		l.tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, _, err := sign(l.tmpl, caCert, key.Public(), caKey)
		if err != nil {
			return Files{}, fmt.Errorf("sign certificate for %s: %w", l.tmpl.Subject.CommonName, err)
		}
		if err := writePEM(l.cert, "CERTIFICATE", der); err != nil {
			return Files{}, err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return Files{}, fmt.Errorf("encode key for %s: %w", l.tmpl.Subject.CommonName, err)
		}
		if err := writePEM(l.keyPath, "PRIVATE KEY", keyDER); err != nil {
			return Files{}, err
		}
	}
	return f, nil
}

func serverTemplate(hosts []string) *x509.Certificate {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "fdx-test-server"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return tmpl
}

// newKey makes a P-256 key: far quicker to generate than RSA, and accepted
// by every TLS stack the tests talk to.
func newKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return k, nil
}

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) ([]byte, *x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("serial number: %w", err)
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return der, cert, nil
}

func writePEM(path, blockType string, der []byte) error {
	b := pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der})
	// Keys are secrets even in tests: keep them private to the user.
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
