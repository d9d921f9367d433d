package logging

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestLimited checks one line per reason per interval, and that the line
// after a quiet spell says how many were suppressed.
func TestLimited(t *testing.T) {
	var buf bytes.Buffer
	l := NewLimited(slog.New(slog.NewTextHandler(&buf, nil)), time.Second)
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	ctx := context.Background()
	for range 1000 {
		l.Warn(ctx, "bad_mac", "chunk refused")
	}
	l.Warn(ctx, "other", "something else")
	if got := strings.Count(buf.String(), "\n"); got != 2 {
		t.Fatalf("1001 warnings of two reasons in one interval wrote %d lines, want 2:\n%s", got, buf.String())
	}
	now = now.Add(time.Second)
	if !l.Warn(ctx, "bad_mac", "chunk refused") {
		t.Fatal("the first warning after the interval was not logged")
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if last := lines[len(lines)-1]; !strings.Contains(last, "suppressed=999") || !strings.Contains(last, "reason=bad_mac") {
		t.Fatalf("line after the interval = %q, want reason=bad_mac suppressed=999", last)
	}
}
