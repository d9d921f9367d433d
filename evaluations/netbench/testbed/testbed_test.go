//go:build netns

// These tests build real namespaces, veth pairs, a bridge and tc qdiscs,
// so they need root. They sit behind the netns build tag, so that
// `go test ./...` does not report them as passed where they cannot run;
// with the tag and without root they fail, saying why:
//
//	sudo go test -tags netns -count=1 ./evaluations/netbench/...
package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary a helper process: "listen ADDR" accepts
// one connection and discards what it reads; "send ADDR N" dials ADDR
// (retrying while the listener starts) and writes N zero bytes.
const helperEnv = "FDXNB_TESTBED_HELPER"

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		if err := helperMain(strings.Fields(h)); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func helperMain(args []string) error {
	switch {
	case len(args) == 2 && args[0] == "listen":
		ln, err := net.Listen("tcp", args[1])
		if err != nil {
			return err
		}
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, c)
		return err
	case len(args) == 3 && args[0] == "send":
		n, err := strconv.ParseInt(args[2], 10, 64)
		if err != nil {
			return err
		}
		var c net.Conn
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err = net.DialTimeout("tcp", args[1], time.Second)
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			return err
		}
		if _, err := io.CopyN(c, zeros{}, n); err != nil {
			return err
		}
		return c.Close()
	}
	return fmt.Errorf("unknown helper command %q", args)
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// needRoot fails a test that cannot build namespaces here, saying why: a
// skip would read as a pass.
func needRoot(t *testing.T) {
	t.Helper()
	if err := Preflight(); err != nil {
		t.Fatalf("cannot test the network testbed here: %v", err)
	}
}

// build makes a testbed with a tag of its own and removes it (and
// anything else under its prefix) when the test ends.
func build(t *testing.T, tag string, hosts ...HostSpec) *Testbed {
	t.Helper()
	ctx := context.Background()
	t.Cleanup(func() {
		if _, err := Cleanup(context.Background(), Prefix(tag), nil); err != nil {
			t.Errorf("cleanup %s: %v", Prefix(tag), err)
		}
	})
	tb, err := New(ctx, Spec{Tag: tag, Hosts: hosts})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tb
}

func leftovers(t *testing.T, prefix string) []string {
	t.Helper()
	nss, err := Namespaces(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	links, err := RootLinks(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	return append(nss, links...)
}

func TestIsolationRefusesDefaultRoute(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	tb := build(t, "isodefault", HostSpec{Name: "a", Egress: 1e9, Ingress: 1e9}, HostSpec{Name: "b"})
	if err := tb.CheckIsolation(ctx); err != nil {
		t.Fatalf("fresh testbed: %v", err)
	}
	a, b := tb.Host("a"), tb.Host("b")
	// A default route through another testbed host: no packet would leave
	// the bridge, but the namespace could now route anywhere.
	if out, err := exec.Command("ip", "-n", a.NS, "route", "add", "default", "via", b.Addr.String()).CombinedOutput(); err != nil {
		t.Fatalf("adding a default route: %v: %s", err, out)
	}
	err := tb.CheckIsolation(ctx)
	var iso *IsolationError
	if !errors.As(err, &iso) {
		t.Fatalf("CheckIsolation with a default route = %v, want an IsolationError", err)
	}
	if !strings.Contains(err.Error(), a.NS+" has a default route") || !strings.Contains(err.Error(), "has a route to 8.8.8.8") {
		t.Errorf("the refusal does not name the default route and its reach: %v", err)
	}
}

func TestIsolationRefusesForwarding(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	tb := build(t, "isofwd", HostSpec{Name: "a"})
	if out, err := exec.Command("ip", "netns", "exec", tb.BridgeNS(), "sysctl", "-w", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("sysctl: %v: %s", err, out)
	}
	err := tb.CheckIsolation(ctx)
	if err == nil || !strings.Contains(err.Error(), "forwards packets") {
		t.Fatalf("CheckIsolation with forwarding on = %v, want a refusal naming forwarding", err)
	}
}

func TestLinkShapedAndCounted(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	const rate = 100e6 // 100 Mbit/s
	tb := build(t, "shape", HostSpec{Name: "a", Egress: rate}, HostSpec{Name: "b"})
	b := tb.Host("b")
	before, err := tb.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 5 MB from a to b: a's egress is shaped, so it takes about 0.4 s.
	// The test binary itself listens and sends (helperMain), in the hosts'
	// namespaces.
	const n = 5_000_000
	addr := b.Addr.String() + ":7000"
	srv, err := tb.Command(ctx, "b", os.Args[0], "-test.run=^$")
	if err != nil {
		t.Fatal(err)
	}
	srv.Env = append(os.Environ(), helperEnv+"=listen "+addr)
	var srvOut strings.Builder
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill() })
	send, err := tb.Command(ctx, "a", os.Args[0], "-test.run=^$")
	if err != nil {
		t.Fatal(err)
	}
	send.Env = append(os.Environ(), fmt.Sprintf("%s=send %s %d", helperEnv, addr, n))
	start := time.Now()
	if out, err := send.CombinedOutput(); err != nil {
		t.Fatalf("sending: %v: %s (listener: %s)", err, out, srvOut.String())
	}
	// The listener returns once it has read everything.
	done := make(chan error, 1)
	go func() { done <- srv.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("listener: %v: %s", err, srvOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the listener did not receive the 5 MB within 30 s: %s", srvOut.String())
	}
	took := time.Since(start)
	after, err := tb.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := after["a"].Sub(before["a"])
	if got.Egress.Bytes < n {
		t.Errorf("a's egress counted %d bytes, want at least the %d sent", got.Egress.Bytes, n)
	}
	if in := after["b"].Sub(before["b"]).Ingress.Bytes; in < n {
		t.Errorf("b's ingress counted %d bytes, want at least %d", in, n)
	}
	// Shaping is asserted loosely (a timing goal belongs in a benchmark):
	// 5 MB cannot pass a 100 Mbit/s link in under a quarter second.
	if min := time.Duration(float64(n*8) / rate * 0.6 * float64(time.Second)); took < min {
		t.Errorf("5 MB passed the 100 Mbit/s link in %v, faster than the %v it allows", took, min)
	}
}

func TestCleanupAfterCrash(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	tb, err := New(ctx, Spec{Tag: "crash", Hosts: []HostSpec{{Name: "a"}, {Name: "b", Egress: 1e9}}})
	if err != nil {
		t.Fatal(err)
	}
	prefix := tb.Prefix()
	t.Cleanup(func() { _, _ = Cleanup(context.Background(), prefix, nil) })
	// A process left inside, as a crashed run would leave a broker.
	cmd, err := tb.Command(ctx, "a", "sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { _ = cmd.Wait(); close(reaped) }()
	// Forget tb, as a crash would, and clean up by prefix alone.
	removed, err := Cleanup(ctx, prefix, nil)
	if err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if len(removed) != 3 {
		t.Errorf("Cleanup removed %v, want the 3 namespaces", removed)
	}
	if left := leftovers(t, prefix); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	select {
	case <-reaped:
	case <-time.After(20 * time.Second):
		t.Errorf("the process in the testbed (pid %d) still runs", cmd.Process.Pid)
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
	}
}

func TestNewRefusesBadSpec(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	for _, spec := range []Spec{
		{Tag: "Bad!", Hosts: []HostSpec{{Name: "a"}}},
		{Tag: "dup", Hosts: []HostSpec{{Name: "a"}, {Name: "a"}}},
		{Tag: "br", Hosts: []HostSpec{{Name: "br"}}},
		{Tag: "none"},
	} {
		if tb, err := New(ctx, spec); err == nil {
			_ = tb.Close(ctx)
			t.Errorf("New(%+v) succeeded, want an error", spec)
		}
		if left := leftovers(t, Root+"x"); len(left) > 0 {
			t.Fatal(left)
		}
	}
	if left := leftovers(t, Prefix("dup")); len(left) > 0 {
		t.Errorf("a refused spec left %v", left)
	}
}
