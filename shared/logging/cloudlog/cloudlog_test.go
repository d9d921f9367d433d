package cloudlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	cloudlogging "cloud.google.com/go/logging"
	"github.com/fdxkafka/fdxkafka/internal/logtest"
	"github.com/fdxkafka/fdxkafka/shared/logging"
)

// offlineCloudEnv makes the Google client libraries look for the metadata
// server at metadataHost (a loopback address) and find no credentials file,
// so that nothing a test does leaves the machine.
func offlineCloudEnv(t *testing.T, metadataHost string) {
	t.Helper()
	logtest.ClearEnv(t)
	home := t.TempDir()
	t.Setenv("GCE_METADATA_HOST", metadataHost)
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", "")
	t.Setenv("HOME", home)
	t.Setenv("CLOUDSDK_CONFIG", home)
}

// closedLoopbackAddr returns a loopback address on which nothing listens.
func closedLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// fakeMetadata serves the few metadata paths New reads, on loopback.
// A path missing from values answers 404, as the real server does for
// undefined metadata.
func fakeMetadata(t *testing.T, values map[string]string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Metadata-Flavor") != "Google" {
			http.Error(w, "missing Metadata-Flavor", http.StatusForbidden)
			return
		}
		v, ok := values[strings.TrimPrefix(r.URL.Path, "/computeMetadata/v1/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Metadata-Flavor", "Google")
		_, _ = w.Write([]byte(v))
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestNewCloudNoProjectNoMetadata(t *testing.T) {
	offlineCloudEnv(t, closedLoopbackAddr(t))
	const timeout = time.Second
	start := time.Now()
	_, _, err := New(context.Background(), logging.Options{Format: logging.FormatCloud, SetupTimeout: timeout})
	elapsed := time.Since(start)
	t.Logf("New error after %v: %v", elapsed, err)
	if err == nil || !strings.Contains(err.Error(), "no project ID") {
		t.Fatalf("New error = %v, want a missing-project error", err)
	}
	if elapsed > timeout+time.Second {
		t.Errorf("New took %v, want at most about %v", elapsed, timeout)
	}
}

func TestNewCloudNoCredentials(t *testing.T) {
	offlineCloudEnv(t, closedLoopbackAddr(t))
	const timeout = time.Second
	start := time.Now()
	_, _, err := New(context.Background(), logging.Options{ProjectID: "proj", SetupTimeout: timeout})
	elapsed := time.Since(start)
	t.Logf("New error after %v: %v", elapsed, err)
	if err == nil || !strings.Contains(err.Error(), "access token") {
		t.Fatalf("New error = %v, want a missing-token error", err)
	}
	if elapsed > timeout+time.Second {
		t.Errorf("New took %v, want at most about %v", elapsed, timeout)
	}
}

// TestNewCloudSilentMetadata checks the deadline against a metadata server
// that accepts connections and never answers, the case that would hang.
func TestNewCloudSilentMetadata(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	offlineCloudEnv(t, strings.TrimPrefix(srv.URL, "http://"))

	const timeout = 500 * time.Millisecond
	start := time.Now()
	_, _, err := New(context.Background(), logging.Options{SetupTimeout: timeout})
	elapsed := time.Since(start)
	t.Logf("New error after %v: %v", elapsed, err)
	if err == nil {
		t.Fatal("New succeeded against a silent metadata server")
	}
	if elapsed > timeout+time.Second {
		t.Errorf("New took %v, want at most about %v", elapsed, timeout)
	}
}

func TestNewCloudCanceledContext(t *testing.T) {
	offlineCloudEnv(t, closedLoopbackAddr(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := New(ctx, logging.Options{}); err == nil {
		t.Fatal("New succeeded with a canceled context")
	}
}

func TestCloudProjectFromMetadata(t *testing.T) {
	offlineCloudEnv(t, fakeMetadata(t, map[string]string{
		"project/project-id": "md-proj\n",
		"instance/id":        "1234567890",
		"instance/zone":      "projects/42/zones/us-central1-a",
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	md := newMetadataClient(time.Second)

	p, err := cloudProject(ctx, logging.Options{}, md)
	if err != nil || p != "md-proj" {
		t.Errorf("cloudProject = %q, %v; want md-proj", p, err)
	}
	t.Setenv("GOOGLE_CLOUD_PROJECT", "env-proj")
	if p, _ := cloudProject(ctx, logging.Options{}, md); p != "env-proj" {
		t.Errorf("cloudProject with env = %q, want env-proj", p)
	}
	if p, _ := cloudProject(ctx, logging.Options{ProjectID: "opt-proj"}, md); p != "opt-proj" {
		t.Errorf("cloudProject with ProjectID = %q, want opt-proj", p)
	}

	res := monitoredResource(ctx, md, "p")
	if res.GetType() != "gce_instance" {
		t.Fatalf("resource type = %q, want gce_instance", res.GetType())
	}
	want := map[string]string{"project_id": "p", "instance_id": "1234567890", "zone": "us-central1-a"}
	logtest.AssertJSONEqual(t, res.GetLabels(), want)

	t.Setenv("K_SERVICE", "fn")
	if res := monitoredResource(ctx, md, "p"); res != nil {
		t.Errorf("resource on Cloud Run = %v, want nil (library detects it)", res)
	}
}

func TestMonitoredResourceFallsBackToGlobal(t *testing.T) {
	offlineCloudEnv(t, fakeMetadata(t, nil))
	res := monitoredResource(context.Background(), newMetadataClient(time.Second), "p")
	if res.GetType() != "global" || res.GetLabels()["project_id"] != "p" {
		t.Errorf("resource = %v, want global for project p", res)
	}
}

// recorder is an entryLogger that keeps entries instead of sending them.
type recorder struct{ entries []cloudlogging.Entry }

func (r *recorder) Log(e cloudlogging.Entry) { r.entries = append(r.entries, e) }

func TestCloudHandlerEntry(t *testing.T) {
	rec := &recorder{}
	l := slog.New(&cloudHandler{sink: rec, project: "proj", level: slog.LevelDebug, addSource: true})
	ctx := logging.WithTrace(context.Background(), testTraceID+"/1;o=1")
	l.With("job", "mnist").WithGroup("round").With("n", 3).
		WarnContext(ctx, "slow round", "took", 1500*time.Millisecond, slog.Group("bytes", "in", 1), slog.Group("none"),
			"err", errors.New("boom"), "nan", math.NaN(), "ch", make(chan int))
	l.Debug("debug")
	l.Log(context.Background(), slog.LevelDebug-4, "below")

	if len(rec.entries) != 2 {
		t.Fatalf("got %d entries, want 2 (the last one is below the level)", len(rec.entries))
	}
	e := rec.entries[0]
	if e.Severity != cloudlogging.Warning {
		t.Errorf("severity = %v, want Warning", e.Severity)
	}
	if e.Trace != "projects/proj/traces/"+testTraceID || e.SpanID != testSpanHex || !e.TraceSampled {
		t.Errorf("trace = %q span = %q sampled = %v", e.Trace, e.SpanID, e.TraceSampled)
	}
	if e.Timestamp.IsZero() {
		t.Error("timestamp is zero")
	}
	if s := e.SourceLocation; s == nil || !strings.HasSuffix(s.GetFile(), "_test.go") || s.GetLine() <= 0 ||
		!strings.HasSuffix(s.GetFunction(), "TestCloudHandlerEntry") {
		t.Errorf("source location = %v, want this test", s)
	}
	payload, err := json.Marshal(e.Payload)
	if err != nil {
		t.Fatalf("payload does not marshal: %v", err)
	}
	var got map[string]any
	if err := json.Unmarshal(payload, &got); err != nil {
		t.Fatal(err)
	}
	ch, _ := got["round"].(map[string]any)["ch"].(string)
	if !strings.HasPrefix(ch, "0x") {
		t.Errorf("unmarshalable value = %q, want its %%v text", ch)
	}
	delete(got["round"].(map[string]any), "ch")
	logtest.AssertJSONEqual(t, got, map[string]any{
		"message": "slow round",
		"job":     "mnist",
		"round": map[string]any{
			"n":     3,
			"took":  "1.5s",
			"bytes": map[string]any{"in": 1},
			"err":   "boom",
			"nan":   "NaN",
		},
	})

	if d := rec.entries[1]; d.Severity != cloudlogging.Debug || d.Trace != "" {
		t.Errorf("debug entry severity = %v trace = %q", d.Severity, d.Trace)
	}
}

func TestOpenPlain(t *testing.T) {
	logtest.ClearEnv(t)
	var buf bytes.Buffer
	l, closeFn, err := Open(context.Background(), &buf, logging.Options{Format: logging.FormatGCP})
	if err != nil {
		t.Fatal(err)
	}
	l.Info("opened")
	if err := closeFn(); err != nil {
		t.Errorf("close: %v", err)
	}
	if m := logtest.DecodeLine(t, &buf); m["message"] != "opened" {
		t.Errorf("message = %v", m["message"])
	}
}

const (
	testTraceID = "105445aa7843bc8bf206b12000100000"
	testSpanHex = "0000000000000001"
)
