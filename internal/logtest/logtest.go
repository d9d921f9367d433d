// Package logtest holds what the tests of the logging packages share: a
// clean environment and one-line JSON decoding.
package logtest

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
)

// ClearEnv removes every variable that changes the logging packages'
// behaviour, so a test sees the same environment on a laptop, in CI and
// on Cloud Shell.
func ClearEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{"FUNCTION_TARGET", "K_SERVICE", "GOOGLE_CLOUD_PROJECT", "GCP_PROJECT"} {
		t.Setenv(k, "")
	}
}

// DecodeLine parses buf as exactly one JSON line.
func DecodeLine(t *testing.T, buf *bytes.Buffer) map[string]any {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 1 {
		t.Fatalf("got %d lines, want 1:\n%s", len(lines), buf.String())
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &m); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, lines[0])
	}
	return m
}

// AssertJSONEqual fails t unless got and want encode to the same JSON.
func AssertJSONEqual(t *testing.T, got, want any) {
	t.Helper()
	g, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g, w) {
		t.Errorf("fields differ\n got: %s\nwant: %s", g, w)
	}
}

// SyncBuffer is a bytes.Buffer that goroutines may write concurrently, for
// collecting log output.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
