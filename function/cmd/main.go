// Command cmd serves the function locally as the Cloud Functions runtime
// would: PORT (default 8080), HOST (default all interfaces) and
// FUNCTION_TARGET=Handler, the function at "/".
//
// It serves function.Handler with net/http directly rather than through
// functions-framework-go, whose start call builds a server without any
// read or idle timeout: there, 300 slow sockets stayed open for 75 s. Here
// every connection gets the timeouts of shared/httpserver.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fdxkafka/fdxkafka/function"
	"github.com/fdxkafka/fdxkafka/shared/httpserver"
)

// target is the only function this binary serves.
const target = "Handler"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, httpserver.Timeouts{}); err != nil {
		slog.Error("function server", "err", err)
		os.Exit(1)
	}
}

// run listens where the environment says and serves until ctx ends.
func run(ctx context.Context, getenv func(string) string, t httpserver.Timeouts) error {
	port := getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if ft := getenv("FUNCTION_TARGET"); ft != "" && ft != target {
		return fmt.Errorf("FUNCTION_TARGET=%q: this binary serves only %q", ft, target)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", net.JoinHostPort(getenv("HOST"), port))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	slog.Info("serving function", "target", target, "addr", ln.Addr().String())
	return serve(ctx, ln, t)
}

// serve serves function.Handler on ln until ctx ends, then drains
// in-flight invocations for a while.
func serve(ctx context.Context, ln net.Listener, t httpserver.Timeouts) error {
	srv := httpserver.New(http.HandlerFunc(function.Handler), t, slog.Default())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
