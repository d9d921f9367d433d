package logging

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/internal/logtest"
)

const (
	testTraceID = "105445aa7843bc8bf206b12000100000"
	testSpanHex = "0000000000000001"
)

func newLogger(t *testing.T, buf *bytes.Buffer, opts Options) *slog.Logger {
	t.Helper()
	l, err := New(buf, opts)
	if err != nil {
		t.Fatalf("New(%+v): %v", opts, err)
	}
	return l
}

func TestGCPSeverity(t *testing.T) {
	logtest.ClearEnv(t)
	for _, tc := range []struct {
		level slog.Level
		want  string
	}{
		{slog.LevelDebug - 4, "DEBUG"},
		{slog.LevelDebug, "DEBUG"},
		{slog.LevelInfo, "INFO"},
		{slog.LevelInfo + 2, "INFO"},
		{slog.LevelWarn, "WARNING"},
		{slog.LevelError, "ERROR"},
		{slog.LevelError + 4, "ERROR"},
	} {
		t.Run(tc.level.String(), func(t *testing.T) {
			var buf bytes.Buffer
			l := newLogger(t, &buf, Options{Format: FormatGCP, Level: slog.LevelDebug - 8})
			l.Log(context.Background(), tc.level, "msg "+tc.want)
			m := logtest.DecodeLine(t, &buf)
			if got := m["severity"]; got != tc.want {
				t.Errorf("severity = %v, want %q", got, tc.want)
			}
			if got := m["message"]; got != "msg "+tc.want {
				t.Errorf("message = %v, want %q", got, "msg "+tc.want)
			}
			for _, k := range []string{"level", "msg"} {
				if _, ok := m[k]; ok {
					t.Errorf("slog key %q present, want it renamed", k)
				}
			}
		})
	}
}

func TestGCPLevelFilter(t *testing.T) {
	logtest.ClearEnv(t)
	var buf bytes.Buffer
	l := newLogger(t, &buf, Options{Format: FormatGCP, Level: slog.LevelWarn})
	l.Info("dropped")
	l.Warn("kept")
	if m := logtest.DecodeLine(t, &buf); m["message"] != "kept" {
		t.Errorf("message = %v, want kept", m["message"])
	}
}

func TestGCPFields(t *testing.T) {
	logtest.ClearEnv(t)
	var buf bytes.Buffer
	l := newLogger(t, &buf, Options{Format: FormatGCP, ProjectID: "proj", AddSource: true})
	ctx := WithTrace(context.Background(), testTraceID+"/1;o=1")
	before := time.Now()
	l.With("job", "mnist").WithGroup("round").With("n", 3).
		InfoContext(ctx, "round closed", "clients", 10, slog.Group("bytes", "in", 1024, "out", 2048), "err", errors.New("boom"))

	m := logtest.DecodeLine(t, &buf)
	src, ok := m["logging.googleapis.com/sourceLocation"].(map[string]any)
	if !ok {
		t.Fatalf("sourceLocation missing or not an object: %v", m)
	}
	if f, _ := src["file"].(string); !strings.HasSuffix(f, "_test.go") {
		t.Errorf("sourceLocation.file = %q, want a _test.go file", f)
	}
	if line, _ := src["line"].(float64); line <= 0 {
		t.Errorf("sourceLocation.line = %v, want > 0", src["line"])
	}
	if fn, _ := src["function"].(string); !strings.HasSuffix(fn, "TestGCPFields") {
		t.Errorf("sourceLocation.function = %q, want ...TestGCPFields", fn)
	}
	ts, err := time.Parse(time.RFC3339Nano, m["time"].(string))
	if err != nil {
		t.Errorf("time %v: %v", m["time"], err)
	} else if ts.Before(before.Add(-time.Second)) || ts.After(time.Now().Add(time.Second)) {
		t.Errorf("time = %v, want about %v", ts, before)
	}
	delete(m, "logging.googleapis.com/sourceLocation")
	delete(m, "time")

	want := map[string]any{
		"severity":                             "INFO",
		"message":                              "round closed",
		"logging.googleapis.com/trace":         "projects/proj/traces/" + testTraceID,
		"logging.googleapis.com/spanId":        testSpanHex,
		"logging.googleapis.com/trace_sampled": true,
		"job":                                  "mnist",
		"round": map[string]any{
			"n":       float64(3),
			"clients": float64(10),
			"bytes":   map[string]any{"in": float64(1024), "out": float64(2048)},
			"err":     "boom",
		},
	}
	logtest.AssertJSONEqual(t, m, want)
}

func TestGCPNoTraceNoSource(t *testing.T) {
	logtest.ClearEnv(t)
	var buf bytes.Buffer
	l := newLogger(t, &buf, Options{Format: FormatGCP, ProjectID: "proj"})
	l.WithGroup("empty").InfoContext(context.Background(), "plain")
	m := logtest.DecodeLine(t, &buf)
	delete(m, "time")
	logtest.AssertJSONEqual(t, m, map[string]any{"severity": "INFO", "message": "plain"})
}

func TestGCPTraceProject(t *testing.T) {
	const header = testTraceID + "/1"
	for _, tc := range []struct {
		name       string
		opts       string // Options.ProjectID
		middleware string // project given to HTTPMiddleware
		env        map[string]string
		want       string
	}{
		{"options", "opt", "mw", map[string]string{"GOOGLE_CLOUD_PROJECT": "env"}, "projects/opt/traces/" + testTraceID},
		{"middleware", "", "mw", map[string]string{"GOOGLE_CLOUD_PROJECT": "env"}, "projects/mw/traces/" + testTraceID},
		{"GOOGLE_CLOUD_PROJECT", "", "", map[string]string{"GOOGLE_CLOUD_PROJECT": "env", "GCP_PROJECT": "old"}, "projects/env/traces/" + testTraceID},
		{"GCP_PROJECT", "", "", map[string]string{"GCP_PROJECT": "old"}, "projects/old/traces/" + testTraceID},
		{"none", "", "", nil, testTraceID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logtest.ClearEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var buf bytes.Buffer
			l := newLogger(t, &buf, Options{Format: FormatGCP, ProjectID: tc.opts})
			h := HTTPMiddleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				l.InfoContext(r.Context(), "served")
			}), tc.middleware)
			req := httptest.NewRequest(http.MethodPost, "/", nil)
			req.Header.Set("X-Cloud-Trace-Context", header)
			h.ServeHTTP(httptest.NewRecorder(), req)
			m := logtest.DecodeLine(t, &buf)
			if got := m["logging.googleapis.com/trace"]; got != tc.want {
				t.Errorf("trace = %v, want %q", got, tc.want)
			}
			if got := m["logging.googleapis.com/spanId"]; got != testSpanHex {
				t.Errorf("spanId = %v, want %q", got, testSpanHex)
			}
			if _, ok := m["logging.googleapis.com/trace_sampled"]; ok {
				t.Errorf("trace_sampled set without o=1")
			}
		})
	}
}

func TestHTTPMiddlewareHeaders(t *testing.T) {
	logtest.ClearEnv(t)
	const (
		w3cTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
		w3cSpan  = "00f067aa0ba902b7"
	)
	for _, tc := range []struct {
		name      string
		headers   map[string]string
		wantTrace string
		wantSpan  string
	}{
		{"cloud", map[string]string{"X-Cloud-Trace-Context": testTraceID + "/12345;o=1"}, testTraceID, "0000000000003039"},
		{"traceparent", map[string]string{"traceparent": "00-" + w3cTrace + "-" + w3cSpan + "-01"}, w3cTrace, w3cSpan},
		{"both prefers traceparent", map[string]string{
			"traceparent":           "00-" + w3cTrace + "-" + w3cSpan + "-01",
			"X-Cloud-Trace-Context": testTraceID + "/1;o=1",
		}, w3cTrace, w3cSpan},
		{"bad traceparent falls back", map[string]string{
			"traceparent":           "00-nothex-" + w3cSpan + "-01",
			"X-Cloud-Trace-Context": testTraceID + "/12345;o=1",
		}, testTraceID, "0000000000003039"},
		{"none", nil, "", ""},
		{"garbage", map[string]string{"X-Cloud-Trace-Context": "not a trace"}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			l := newLogger(t, &buf, Options{Format: FormatGCP})
			h := HTTPMiddleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				l.InfoContext(r.Context(), "served")
			}), "p")
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			h.ServeHTTP(httptest.NewRecorder(), req)
			m := logtest.DecodeLine(t, &buf)
			if tc.wantTrace == "" {
				for _, k := range []string{"logging.googleapis.com/trace", "logging.googleapis.com/spanId", "logging.googleapis.com/trace_sampled"} {
					if v, ok := m[k]; ok {
						t.Errorf("%s = %v, want absent", k, v)
					}
				}
				return
			}
			if got, want := m["logging.googleapis.com/trace"], "projects/p/traces/"+tc.wantTrace; got != want {
				t.Errorf("trace = %v, want %q", got, want)
			}
			if got := m["logging.googleapis.com/spanId"]; got != tc.wantSpan {
				t.Errorf("spanId = %v, want %q", got, tc.wantSpan)
			}
			if got := m["logging.googleapis.com/trace_sampled"]; got != true {
				t.Errorf("trace_sampled = %v, want true", got)
			}
		})
	}
}

func TestParseTraceHeader(t *testing.T) {
	for _, tc := range []struct {
		header string
		want   Trace
		ok     bool
	}{
		{testTraceID + "/1;o=1", Trace{TraceID: testTraceID, SpanID: testSpanHex, Sampled: true}, true},
		{testTraceID + "/18446744073709551615;o=0", Trace{TraceID: testTraceID, SpanID: "ffffffffffffffff"}, true},
		{testTraceID, Trace{TraceID: testTraceID}, true},
		{strings.ToUpper(testTraceID) + "/0", Trace{TraceID: testTraceID}, true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			Trace{TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", SpanID: "00f067aa0ba902b7", Sampled: true}, true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
			Trace{TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", SpanID: "00f067aa0ba902b7"}, true},
		{"", Trace{}, false},
		{"abc/1", Trace{}, false},
		{testTraceID + "/x1", Trace{}, false},
		{"00000000000000000000000000000000/1", Trace{}, false},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", Trace{}, false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", Trace{}, false},
		{"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Trace{}, false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz", Trace{}, false},
	} {
		got, err := ParseTraceHeader(tc.header)
		if (err == nil) != tc.ok {
			t.Errorf("ParseTraceHeader(%q) error = %v, want ok=%v", tc.header, err, tc.ok)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseTraceHeader(%q) = %+v, want %+v", tc.header, got, tc.want)
		}
	}
}

func TestWithTraceBadHeaderKeepsContext(t *testing.T) {
	ctx := ContextWithTrace(context.Background(), Trace{TraceID: testTraceID})
	if got := WithTrace(ctx, "garbage"); got != ctx {
		t.Error("WithTrace with a bad header returned a new context")
	}
	if _, ok := TraceFromContext(WithTrace(context.Background(), "")); ok {
		t.Error("WithTrace with an empty header stored a trace")
	}
}

func TestTextFormat(t *testing.T) {
	logtest.ClearEnv(t)
	var buf bytes.Buffer
	l := newLogger(t, &buf, Options{Format: FormatText})
	ctx := WithTrace(context.Background(), testTraceID+"/1")
	l.WithGroup("round").InfoContext(ctx, "round closed", "n", 3)
	line := buf.String()
	for _, want := range []string{
		"level=INFO", `msg="round closed"`, "round.n=3",
		"trace_id=" + testTraceID, "span_id=" + testSpanHex,
	} {
		if !strings.Contains(line, want) {
			t.Errorf("text line %q lacks %q", line, want)
		}
	}
	if strings.HasPrefix(strings.TrimSpace(line), "{") {
		t.Errorf("text format wrote JSON: %s", line)
	}
}

func TestJSONFormat(t *testing.T) {
	logtest.ClearEnv(t)
	var buf bytes.Buffer
	l := newLogger(t, &buf, Options{Format: FormatJSON, Level: slog.LevelDebug})
	ctx := WithTrace(context.Background(), testTraceID)
	l.DebugContext(ctx, "hello", "k", "v")
	m := logtest.DecodeLine(t, &buf)
	delete(m, "time")
	logtest.AssertJSONEqual(t, m, map[string]any{"level": "DEBUG", "msg": "hello", "k": "v", "trace_id": testTraceID})
}

func TestDetect(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name     string
		getenv   func(string) string
		terminal bool
		want     Format
	}{
		{"function", env("FUNCTION_TARGET", "Handler"), true, FormatGCP},
		{"cloud run", env("K_SERVICE", "svc"), false, FormatGCP},
		{"terminal", env(), true, FormatText},
		{"pipe", env(), false, FormatJSON},
	} {
		if got := detect(tc.getenv, tc.terminal); got != tc.want {
			t.Errorf("%s: detect = %q, want %q", tc.name, got, tc.want)
		}
	}

	logtest.ClearEnv(t)
	t.Setenv("FUNCTION_TARGET", "Handler")
	if got := Detect(); got != FormatGCP {
		t.Errorf("Detect() with FUNCTION_TARGET = %q, want gcp", got)
	}
	var buf bytes.Buffer
	newLogger(t, &buf, Options{}).Info("auto")
	if m := logtest.DecodeLine(t, &buf); m["severity"] != "INFO" {
		t.Errorf("auto format on a function is not gcp: %v", m)
	}
}

func TestParseFormat(t *testing.T) {
	for in, want := range map[string]Format{
		"": FormatAuto, "auto": FormatAuto, "TEXT": FormatText, "json": FormatJSON, " gcp ": FormatGCP, "cloud": FormatCloud,
	} {
		got, err := ParseFormat(in)
		if err != nil || got != want {
			t.Errorf("ParseFormat(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseFormat("xml"); err == nil {
		t.Error("ParseFormat(xml) succeeded")
	}

	var f Format
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(new(bytes.Buffer))
	fs.Var(&f, "log-to", "")
	if err := fs.Parse([]string{"--log-to", "cloud"}); err != nil || f != FormatCloud {
		t.Errorf("flag --log-to cloud: %q, %v", f, err)
	}
	if err := fs.Parse([]string{"--log-to", "xml"}); err == nil {
		t.Error("flag --log-to xml succeeded")
	}
}

func TestNewErrors(t *testing.T) {
	logtest.ClearEnv(t)
	if _, err := New(nil, Options{Format: FormatJSON}); err == nil {
		t.Error("New(nil writer) succeeded")
	}
	if _, err := New(new(bytes.Buffer), Options{Format: FormatCloud}); err == nil || !strings.Contains(err.Error(), "cloudlog") {
		t.Errorf("New(cloud) error = %v, want one pointing at package cloudlog", err)
	}
	if _, err := New(new(bytes.Buffer), Options{Format: "xml"}); err == nil {
		t.Error("New(xml) succeeded")
	}
}

// TestConcurrentUse runs loggers derived from one handler in parallel, for
// the race detector.
func TestConcurrentUse(t *testing.T) {
	logtest.ClearEnv(t)
	var buf logtest.SyncBuffer
	l, err := New(&buf, Options{Format: FormatGCP})
	if err != nil {
		t.Fatal(err)
	}
	base := l.WithGroup("g")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			ctx := WithTrace(context.Background(), testTraceID)
			base.With("worker", i).InfoContext(ctx, "work", "i", i)
		})
	}
	wg.Wait()
	if n := strings.Count(buf.String(), "\n"); n != 8 {
		t.Errorf("got %d lines, want 8", n)
	}
}
