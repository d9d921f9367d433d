package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--minclients", "0"}, "minclients"},
		{[]string{"--numrounds", "0"}, "numrounds"},
		{[]string{"--model", "cnn"}, "--model"},
		{[]string{"--partition", "weird"}, "--partition"},
		{[]string{"--strategy", "fedfoo"}, "--strategy"},
		{[]string{"--job", "a b"}, "--job"},
		{[]string{"--grpc", "--embedded"}, "does not go with --grpc"},
		{[]string{"--on-short", "maybe"}, "--on-short"},
		{[]string{"--clients", "2", "--minclients", "3"}, "below --minclients"},
		{[]string{"--kafka-config", "/nonexistent/file"}, "kafka properties"},
		{[]string{"--lr", "-1"}, "training options"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"--broker", ""}, "--broker"},
		{[]string{"--client-list", "/nonexistent"}, "--client-list"},
		{[]string{"--tls-cert", "x"}, "go together"},
		{[]string{"--tokens-file", "x"}, "add --grpc"},
	} {
		_, err := parseFlags(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
	c, err := parseFlags([]string{"--broker", "b:1", "--minclients", "4", "--numrounds", "2", "--grpc"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Broker != "b:1" || c.MinClients != 4 || c.NumRounds != 2 || !c.GRPC || c.Partitions != 4 {
		t.Errorf("parsed %+v", c.Options)
	}
	list := filepath.Join(t.TempDir(), "clients")
	if err := os.WriteFile(list, []byte("# ids\n0\n 1 \n\nalice\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err = parseFlags([]string{"--client-list", list}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Allowed) != 3 || !c.Allowed["0"] || !c.Allowed["1"] || !c.Allowed["alice"] {
		t.Errorf("client list parsed as %v", c.Allowed)
	}
}
