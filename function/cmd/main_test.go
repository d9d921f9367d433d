package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/shared/httpserver"
)

// TestSlowHeaderClientCutOff: a client that never finishes its request
// headers is disconnected after the read-header timeout, while a complete
// request on another connection reaches the function.
func TestSlowHeaderClientCutOff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- serve(ctx, ln, httpserver.Timeouts{ReadHeader: 300 * time.Millisecond, Read: time.Second, Idle: time.Second})
	}()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()

	slow, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := io.WriteString(slow, "POST / HTTP/1.1\r\nHost: fn\r\nContent-Type: application/json\r\n"); err != nil {
		t.Fatal(err)
	}

	// The function answers a GET with 405 and needs no broker for it.
	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != http.MethodPost {
		t.Fatalf("GET / = %d (Allow %q); want the function's 405", resp.StatusCode, resp.Header.Get("Allow"))
	}

	// A stuck connection would stay open for good; give the 300 ms
	// timeout ample room under load.
	const limit = 10 * time.Second
	start := time.Now()
	slow.SetReadDeadline(start.Add(limit))
	_, err = io.Copy(io.Discard, bufio.NewReader(slow))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("slow-header connection still open after %v", limit)
	}
	t.Logf("slow-header connection closed after %v", time.Since(start).Round(time.Millisecond))
}

func TestFunctionTarget(t *testing.T) {
	env := map[string]string{"FUNCTION_TARGET": "Other", "PORT": "0", "HOST": "127.0.0.1"}
	err := run(context.Background(), func(k string) string { return env[k] }, httpserver.Timeouts{})
	if err == nil {
		t.Fatal("run with FUNCTION_TARGET=Other succeeded; want an error")
	}
}
