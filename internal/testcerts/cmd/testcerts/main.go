// Command testcerts writes a throwaway CA, a server certificate for
// loopback and a client certificate (package testcerts) as PEM files into
// a directory, and prints their paths as shell assignments:
//
//	eval "$(go run ./internal/testcerts/cmd/testcerts -dir /tmp/certs)"
//	# FDX_KAFKA_TLS_CA, FDX_KAFKA_TLS_CERT, FDX_KAFKA_TLS_KEY,
//	# FDX_TEST_CLIENT_CERT, FDX_TEST_CLIENT_KEY
//
// The first three are what deploy/kafka/kafka.sh's secure mode takes for
// its TLS listener. The keys are for tests only: new ones every run, valid
// for a day.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/fdxkafka/fdxkafka/internal/cli"
	"github.com/fdxkafka/fdxkafka/internal/testcerts"
)

func main() { cli.Main("testcerts", run) }

func run(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("testcerts", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory to write the PEM files into (created 0700)")
	hosts := fs.String("hosts", "", "comma-separated IPs and DNS names of the server certificate (default 127.0.0.1,::1,localhost)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return cli.Usagef("-dir is required")
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	var hs []string
	if *hosts != "" {
		hs = strings.Split(*hosts, ",")
	}
	f, err := testcerts.Write(*dir, hs...)
	if err != nil {
		return err
	}
	for _, kv := range [][2]string{
		{"FDX_KAFKA_TLS_CA", f.CA}, {"FDX_KAFKA_TLS_CERT", f.ServerCert}, {"FDX_KAFKA_TLS_KEY", f.ServerKey},
		{"FDX_TEST_CLIENT_CERT", f.ClientCert}, {"FDX_TEST_CLIENT_KEY", f.ClientKey},
	} {
		fmt.Fprintf(stdout, "%s=%q\n", kv[0], kv[1])
	}
	return nil
}
