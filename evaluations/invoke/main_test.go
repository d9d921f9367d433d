package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestInvokesWithThePoCPayload(t *testing.T) {
	var mu sync.Mutex
	var bodies []map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b map[string]any
		if err := json.NewDecoder(r.Body).Decode(&b); err != nil || r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		mu.Lock()
		bodies = append(bodies, b)
		mu.Unlock()
		w.Write([]byte(`{"client_id":"x"}`))
	}))
	defer srv.Close()
	out := filepath.Join(t.TempDir(), "invoke.json")
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"-url", srv.URL, "-broker", "10.0.0.5:9092", "-n", "4", "-first-id", "50",
		"-concurrency", "2", "-token", "tok", "-json", out}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "4 succeeded") {
		t.Errorf("summary:\n%s", stdout.String())
	}
	ids := map[string]bool{}
	for _, b := range bodies {
		// The PoC's payload: exactly broker, client_id and channel when
		// no optional flag is given.
		if len(b) != 3 || b["broker"] != "10.0.0.5:9092" || b["channel"] != "kafka" {
			t.Errorf("payload %v", b)
		}
		ids[b["client_id"].(string)] = true
	}
	if len(ids) != 4 || !ids["50"] || !ids["53"] {
		t.Errorf("client ids %v, want 50..53", ids)
	}
	if b, err := os.ReadFile(out); err != nil || !json.Valid(b) {
		t.Errorf("JSON file: %v", err)
	}
}

func TestFailuresMakeAnError(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"error":"round already closed"}`, http.StatusConflict)
	}))
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"-url", srv.URL, "-broker", "b:1", "-n", "2", "-round", "3", "-rounds", "1", "-timeout-s", "30"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "2 of 2 invocations failed") {
		t.Errorf("err = %v", err)
	}
	if !strings.Contains(stdout.String(), "409 Conflict") {
		t.Errorf("summary lacks the status:\n%s", stdout.String())
	}
}

func TestMissingFlags(t *testing.T) {
	t.Setenv("FDX_FUNCTION_URL", "")
	for _, args := range [][]string{{"-broker", "b:1"}, {"-url", "http://x"}, {"-url", "http://x", "-broker", "b:1", "-n", "0"}} {
		if err := run(context.Background(), args, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}
