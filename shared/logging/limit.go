package logging

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Limited logs at most one line per reason per interval. What a remote
// party can cause many times a second (records that fail to verify, say)
// must not be able to fill the disk or bury every other line: the first
// occurrence of a reason is logged at once, later ones within the interval
// are only counted, and the next line of that reason carries the count in
// "suppressed". Safe for concurrent use.
type Limited struct {
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu      sync.Mutex
	reasons map[string]*limitState
}

type limitState struct {
	last       time.Time
	suppressed int64
}

// maxReasons bounds the reasons a Limited remembers.
const maxReasons = 1 << 14

// hasKey reports whether slog-style args hold the key.
func hasKey(args []any, key string) bool {
	for i := 0; i+1 < len(args); i += 2 {
		if k, ok := args[i].(string); ok && k == key {
			return true
		}
	}
	return false
}

// NewLimited returns a Limited writing to log; interval 0 means ten seconds.
func NewLimited(log *slog.Logger, interval time.Duration) *Limited {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if interval <= 0 {
		interval = 10 * time.Second
	}
	return &Limited{log: log, interval: interval, now: time.Now, reasons: map[string]*limitState{}}
}

// Warn logs msg with args and reason (unless args has a "reason" of
// its own) at warning level, unless a line of
// the same reason was logged less than the interval ago. It reports
// whether it logged.
func (l *Limited) Warn(ctx context.Context, reason, msg string, args ...any) bool {
	l.mu.Lock()
	now := l.now()
	st := l.reasons[reason]
	if st == nil {
		if len(l.reasons) >= maxReasons {
			// Reasons may carry what a remote party chose (a client
			// id): bound the memory, at the price of one more line each.
			clear(l.reasons)
		}
		st = &limitState{}
		l.reasons[reason] = st
	} else if now.Sub(st.last) < l.interval {
		st.suppressed++
		l.mu.Unlock()
		return false
	}
	suppressed := st.suppressed
	st.last, st.suppressed = now, 0
	l.mu.Unlock()
	if !hasKey(args, "reason") {
		args = append(args, "reason", reason)
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	l.log.WarnContext(ctx, msg, args...)
	return true
}
