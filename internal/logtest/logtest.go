// Package logtest holds what the tests of the logging packages share: a
// clean environment and one-line JSON decoding.
package logtest

import (
	"bytes"
	"encoding/json"
	"strings"
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
