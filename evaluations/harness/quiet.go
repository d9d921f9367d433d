package harness

import (
	"context"
	"log/slog"
)

// quietHandler drops records below a level. The function, the clients and
// the aggregator log every round of every client at Info; in a run of a
// thousand clients that drowns the harness's own progress lines, so their
// loggers only pass warnings and errors (and debug, when asked for).
type quietHandler struct {
	slog.Handler
	min slog.Level
}

func quiet(l *slog.Logger, component string) *slog.Logger {
	h := l.Handler()
	min := slog.LevelWarn
	if h.Enabled(context.Background(), slog.LevelDebug) {
		min = slog.LevelDebug
	}
	return slog.New(quietHandler{Handler: h, min: min}).With("component", component)
}

func (q quietHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= q.min && q.Handler.Enabled(ctx, l)
}

func (q quietHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return quietHandler{Handler: q.Handler.WithAttrs(as), min: q.min}
}

func (q quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{Handler: q.Handler.WithGroup(name), min: q.min}
}
