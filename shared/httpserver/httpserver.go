// Package httpserver builds the project's HTTP servers with timeouts, so
// that no server we start can be held open by clients that send their
// request slowly or never (Slowloris) or by idle keep-alive connections.
package httpserver

import (
	"log/slog"
	"net/http"
	"time"
)

// Timeouts bound how long a connection may take over each phase. A zero
// field is not "no limit": New replaces it with the default.
type Timeouts struct {
	// ReadHeader bounds reading a request's headers.
	ReadHeader time.Duration
	// Read bounds reading a whole request, headers and body. Our requests
	// are small JSON bodies or scrapes; a handler that runs longer (a
	// function invocation waits for rounds) is not affected: the deadline
	// covers reading, not serving.
	Read time.Duration
	// Idle bounds how long a keep-alive connection may wait for its next
	// request.
	Idle time.Duration
}

// The defaults are generous for real clients on slow networks and still
// free a stalled connection within seconds.
const (
	DefaultReadHeader = 10 * time.Second
	DefaultRead       = 30 * time.Second
	DefaultIdle       = 60 * time.Second
)

// New returns a server for h with t's timeouts (the defaults for zero fields)
// whose own errors (TLS handshakes, timeouts) go to log at warning level.
// log may be nil. There is no write timeout: a function invocation answers
// only when its rounds are done, which may take minutes.
func New(h http.Handler, t Timeouts, log *slog.Logger) *http.Server {
	if t.ReadHeader <= 0 {
		t.ReadHeader = DefaultReadHeader
	}
	if t.Read <= 0 {
		t.Read = DefaultRead
	}
	if t.Idle <= 0 {
		t.Idle = DefaultIdle
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		IdleTimeout:       t.Idle,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}
