package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
)

// TestQuickStart runs the README's first command (the Quick start's
// `go run ./demo ...` line, read from README.md, on a free port) and
// checks what a new user sees: the job's summary on stdout and, on
// stderr, nothing but the aggregator's and the clients' own log lines. A
// line the Kafka client, the runtime or a C library writes past the
// logger fails the test, and so does an error, or a warning from the
// Kafka client, in a run where nothing went wrong.
func TestQuickStart(t *testing.T) {
	args := quickStartArgs(t)
	bin, err := buildDemo(t)
	if err != nil {
		t.Fatal(err)
	}
	// The README's port may be taken on a shared machine; a later flag
	// wins, and the README says this one picks a free port.
	args = append(args, "--broker", "127.0.0.1:0")
	cmd := exec.Command(bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(3 * time.Minute):
		cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		t.Fatalf("demo %v still running after 3 minutes; sent SIGQUIT\n--- stderr ---\n%s", args, lastLines(stderr.String(), tailLines))
	}
	if err != nil {
		t.Fatalf("demo %v: %v\n--- stderr ---\n%s", args, err, lastLines(stderr.String(), tailLines))
	}

	out := stdout.String()
	if !strings.Contains(out, `FDxKafka job "mnist" over kafka: 3 rounds`) || !strings.Contains(out, "rejected: none") {
		t.Errorf("stdout lacks the job's summary:\n%s", out)
	}
	lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
	if len(lines) == 0 || lines[0] == "" {
		t.Fatal("no log lines on stderr; want the aggregator's")
	}
	for i, line := range lines {
		rec, err := logLine(line)
		if err != nil {
			t.Errorf("stderr line %d is not one of our log lines (%v): %s", i+1, err, line)
			continue
		}
		switch {
		case rec.level == "ERROR":
			t.Errorf("stderr line %d: an error in a clean run: %s", i+1, line)
		case rec.level == "WARN" && rec.kafkaClient:
			t.Errorf("stderr line %d: the Kafka client warns in a clean run: %s", i+1, line)
		}
	}
	if t.Failed() {
		t.Logf("--- stderr ---\n%s", lastLines(stderr.String(), tailLines))
	}
}

// quickStartArgs are the arguments of the first command in the README's
// Quick start, which must be `go run ./demo ...`.
func quickStartArgs(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(filepath.Join(kafkatest.RepoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	section, block := false, false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			section = line == "## Quick start"
		case section && strings.HasPrefix(line, "```"):
			block = true
		case section && block:
			cmd, _, _ := strings.Cut(line, "#")
			fields := strings.Fields(cmd)
			if len(fields) < 3 || fields[0] != "go" || fields[1] != "run" || fields[2] != "./demo" {
				t.Fatalf("README Quick start: first command %q; want go run ./demo ...", line)
			}
			return fields[3:]
		}
	}
	t.Fatalf("README.md has no Quick start command (%v)", sc.Err())
	return nil
}

// tailLines is how much of the demo's stderr a failing test prints.
const tailLines = 200

// buildDemo compiles this command into the test's temporary directory.
func buildDemo(t *testing.T) (string, error) {
	bin := filepath.Join(t.TempDir(), "demo")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// logRecord is what the test needs of one log line.
type logRecord struct {
	level       string
	kafkaClient bool
}

// logLine parses a line of our loggers: JSON (the aggregator's default)
// or slog's text format (the local clients'). Both start with the time,
// then the level and the message.
func logLine(line string) (logRecord, error) {
	if strings.HasPrefix(line, "{") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			return logRecord{}, err
		}
		level, _ := m["level"].(string)
		if _, ok := m["time"].(string); !ok || level == "" || m["msg"] == nil {
			return logRecord{}, fmt.Errorf("JSON without time, level and msg")
		}
		return logRecord{level: level, kafkaClient: m["component"] == "kafka-client"}, nil
	}
	if !strings.HasPrefix(line, "time=") || !strings.Contains(line, " level=") || !strings.Contains(line, " msg=") {
		return logRecord{}, fmt.Errorf("neither JSON nor slog text")
	}
	_, rest, _ := strings.Cut(line, " level=")
	level, _, _ := strings.Cut(rest, " ")
	return logRecord{level: level, kafkaClient: strings.Contains(line, " component=kafka-client")}, nil
}

// lastLines is the end of s, at most n lines.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
