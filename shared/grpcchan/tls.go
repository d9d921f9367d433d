package grpcchan

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// ServerTLS builds the aggregator's TLS configuration for ServerOptions.TLS
// from PEM files. With a non-empty clientCAFile every client must present a
// certificate signed by one of that file's CAs (mutual TLS), so only
// enrolled participants can even open a connection; with an empty one any
// client may connect and bearer tokens, if set, are the only check.
//
// TLS 1.2 is the minimum: older versions have known weaknesses and every
// supported gRPC client speaks 1.2 or later.
func ServerTLS(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("server TLS: both a certificate file and a key file are required")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("server TLS: load certificate %s and key %s: %w", certFile, keyFile, err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
	}
	if clientCAFile != "" {
		pool, err := loadPool(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("server TLS: client CA: %w", err)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// ClientTLS builds a participant's TLS configuration for ClientOptions.TLS
// from PEM files.
//
// caFile names the CAs that may sign the aggregator's certificate; empty
// means the system roots, right for an aggregator behind a publicly trusted
// certificate (e.g. a Cloud Run or load balancer endpoint). certFile and
// keyFile, both or neither, are the client's own certificate for an
// aggregator that requires mutual TLS. serverName, when set, is the name the
// aggregator's certificate is checked against instead of the host in the
// dialed address, for dialing by IP a server whose certificate names a host.
func ClientTLS(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: serverName,
	}
	if caFile != "" {
		pool, err := loadPool(caFile)
		if err != nil {
			return nil, fmt.Errorf("client TLS: server CA: %w", err)
		}
		cfg.RootCAs = pool
	}
	switch {
	case certFile == "" && keyFile == "":
	case certFile == "" || keyFile == "":
		return nil, fmt.Errorf("client TLS: a client certificate needs both a certificate file and a key file (got certificate %q, key %q)", certFile, keyFile)
	default:
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client TLS: load certificate %s and key %s: %w", certFile, keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// loadPool reads PEM certificates from path. A file without any is an error
// rather than an empty pool, which would silently trust nothing and fail
// every handshake with a far less helpful message.
func loadPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificates found", path)
	}
	return pool, nil
}
