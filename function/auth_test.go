package function

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// warnings returns the WARN records in JSON log output.
func warnings(t *testing.T, out *bytes.Buffer) []map[string]any {
	t.Helper()
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		if rec["level"] == slog.LevelWarn.String() {
			recs = append(recs, rec)
		}
	}
	return recs
}

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestWarnUnauthenticated(t *testing.T) {
	onCloudRun := env(map[string]string{"K_SERVICE": "fdx-client", "FUNCTION_TARGET": "Handler"})
	for _, tc := range []struct {
		name   string
		getenv func(string) string
		header string // authentication header of every request
		auth   string // its value
		want   int    // warnings after two requests
	}{
		{"unauthenticated on Cloud Run", onCloudRun, "", "", 1},
		{"only FUNCTION_TARGET set", env(map[string]string{"FUNCTION_TARGET": "Handler"}), "", "", 1},
		{"authenticated on Cloud Run", onCloudRun, "Authorization", "Bearer eyJhbGciOi.eyJhdWQiOi.", 0},
		{"authenticated via X-Serverless-Authorization", onCloudRun, "X-Serverless-Authorization", "Bearer eyJhbGciOi.eyJhdWQiOi.", 0},
		{"not on Cloud Run", env(nil), "", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			log := slog.New(slog.NewJSONHandler(&out, nil))
			served := 0
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				served++
				w.WriteHeader(http.StatusTeapot)
			})
			h := warnUnauthenticated(next, log, tc.getenv)
			for range 2 {
				req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("{}"))
				if tc.header != "" {
					req.Header.Set(tc.header, tc.auth)
				}
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusTeapot {
					t.Errorf("status %d; want the wrapped handler's %d", rec.Code, http.StatusTeapot)
				}
			}
			if served != 2 {
				t.Errorf("wrapped handler served %d requests; want 2", served)
			}
			recs := warnings(t, &out)
			if len(recs) != tc.want {
				t.Fatalf("%d warnings; want %d. Log:\n%s", len(recs), tc.want, out.String())
			}
			if tc.want == 0 {
				return
			}
			msg, _ := recs[0]["msg"].(string)
			for _, s := range []string{"without authentication", "--allow-unauthenticated"} {
				if !strings.Contains(msg, s) {
					t.Errorf("warning %q does not mention %q", msg, s)
				}
			}
		})
	}
}

// TestWarnUnauthenticatedLater checks that an authenticated first request
// does not use up the warning: exposure shows whenever it first happens.
func TestWarnUnauthenticatedLater(t *testing.T) {
	var out bytes.Buffer
	h := warnUnauthenticated(http.NotFoundHandler(), slog.New(slog.NewJSONHandler(&out, nil)), env(map[string]string{"K_SERVICE": "fdx-client"}))
	authed := httptest.NewRequest(http.MethodPost, "/", nil)
	authed.Header.Set("Authorization", "Bearer x.y.")
	h.ServeHTTP(httptest.NewRecorder(), authed)
	if n := len(warnings(t, &out)); n != 0 {
		t.Fatalf("%d warnings after an authenticated request; want 0", n)
	}
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/", nil))
	recs := warnings(t, &out)
	if len(recs) != 1 || recs[0]["service"] != "fdx-client" {
		t.Fatalf("warnings %v; want one naming service fdx-client", recs)
	}
}
