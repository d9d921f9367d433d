package httpserver

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// serve runs New(h, t) on a loopback port until the test ends.
func serve(t *testing.T, h http.Handler, to Timeouts) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(h, to, nil)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// cutOff asserts that the server closes conn (after sending at most an
// error response) within limit, which is well above the configured timeout
// and well below what a stuck connection would take.
func cutOff(t *testing.T, conn net.Conn, limit time.Duration) {
	t.Helper()
	start := time.Now()
	conn.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v: the server did not cut off the slow client", limit)
	}
	t.Logf("server closed the connection after %v (err %v)", time.Since(start).Round(time.Millisecond), err)
}

func TestDefaultsFilled(t *testing.T) {
	s := New(http.NotFoundHandler(), Timeouts{Read: time.Second}, nil)
	if s.ReadHeaderTimeout != DefaultReadHeader || s.ReadTimeout != time.Second || s.IdleTimeout != DefaultIdle {
		t.Errorf("New(Timeouts{Read: 1s}) = header %v, read %v, idle %v; want %v, 1s, %v",
			s.ReadHeaderTimeout, s.ReadTimeout, s.IdleTimeout, DefaultReadHeader, DefaultIdle)
	}
	if d := New(nil, Timeouts{}, nil); d.ReadHeaderTimeout <= 0 || d.ReadTimeout <= 0 || d.IdleTimeout <= 0 {
		t.Errorf("New with zero timeouts left one unset: %+v", d)
	}
}

func TestSlowClientscutOff(t *testing.T) {
	to := Timeouts{ReadHeader: 200 * time.Millisecond, Read: 400 * time.Millisecond, Idle: 300 * time.Millisecond}
	addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		io.WriteString(w, "ok")
	}), to)
	dial := func(t *testing.T) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	const limit = 5 * time.Second

	t.Run("control", func(t *testing.T) {
		c := dial(t)
		io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("complete request: %v, %v; want 200", resp, err)
		}
	})
	t.Run("headers never finished", func(t *testing.T) {
		c := dial(t)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
		cutOff(t, c, limit)
	})
	t.Run("headers one byte at a time", func(t *testing.T) {
		c := dial(t)
		done := make(chan struct{})
		defer close(done)
		go func() {
			// Keep trickling: each byte alone would reset a per-read
			// timeout, but not the header deadline.
			for _, b := range []byte("GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Pad: y\r\n", 1000)) {
				select {
				case <-done:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if _, err := c.Write([]byte{b}); err != nil {
					return
				}
			}
		}()
		cutOff(t, c, limit)
	})
	t.Run("body never finished", func(t *testing.T) {
		c := dial(t)
		io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
		cutOff(t, c, limit)
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		c := dial(t)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("first request: %v, %v", resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		cutOff(t, c, limit)
	})
}
