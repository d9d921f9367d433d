package function

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func post(t *testing.T, h http.Handler, body string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body)))
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("response %q is not JSON: %v", rec.Body.String(), err)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	return rec.Code, out
}

func TestBadRequests(t *testing.T) {
	s := NewServer(Config{})
	for _, tc := range []struct {
		name, body, field, msg string
	}{
		{"malformed JSON", `{"broker": "x:1",`, "body", "truncated"},
		{"not JSON", `hello`, "body", "malformed JSON"},
		{"empty body", ``, "body", "empty"},
		{"missing broker", `{"client_id": "1", "channel": "kafka"}`, "broker", "missing"},
		{"blank broker", `{"broker": "  ", "client_id": "1"}`, "broker", "missing"},
		{"unknown channel", `{"broker": "x:1", "client_id": "1", "channel": "mqtt"}`, "channel", "mqtt"},
		{"empty client id", `{"broker": "x:1", "client_id": "", "channel": "kafka"}`, "client_id", "empty"},
		{"missing client id", `{"broker": "x:1", "channel": "kafka"}`, "client_id", "missing"},
		{"negative client id", `{"broker": "x:1", "client_id": -3}`, "client_id", "non-negative"},
		{"client id object", `{"broker": "x:1", "client_id": {}}`, "client_id", "string or an integer"},
		{"wrong type", `{"broker": 5, "client_id": "1"}`, "broker", "want string"},
		{"unknown field", `{"broker": "x:1", "clientid": "1"}`, "clientid", "unknown field"},
		{"bad rounds", `{"broker": "x:1", "client_id": "1", "rounds": 0}`, "rounds", "want 1 to"},
		{"bad timeout", `{"broker": "x:1", "client_id": "1", "timeout_s": -1}`, "timeout_s", "more than 0"},
		{"bad job", `{"broker": "x:1", "client_id": "1", "job": "a/b"}`, "job", "job id"},
		{"negative round", `{"broker": "x:1", "client_id": "1", "round": -1}`, "round", "negative"},
		{"trailing data", `{"broker": "x:1", "client_id": "1"} {}`, "body", "trailing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := post(t, s, tc.body)
			if code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400 (%v)", code, out)
			}
			msg, _ := out["error"].(string)
			if out["field"] != tc.field || !strings.Contains(msg, tc.msg) {
				t.Errorf("got field %v error %q; want field %q and a message containing %q", out["field"], msg, tc.field, tc.msg)
			}
		})
	}
}

func TestMethodNotAllowed(t *testing.T) {
	rec := httptest.NewRecorder()
	NewServer(Config{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "POST" {
		t.Errorf("GET: status %d Allow %q", rec.Code, rec.Header().Get("Allow"))
	}
}

func TestParseRequestDefaultsAndNumbers(t *testing.T) {
	req, err := ParseRequest(strings.NewReader(`{"client_id": 7, "timeout_s": 2.5}`), Defaults{Broker: "b:9092", Job: "j"})
	if err != nil {
		t.Fatal(err)
	}
	want := Request{Broker: "b:9092", ClientID: "7", Channel: "kafka", Job: "j", Rounds: 1, Timeout: 2500 * time.Millisecond}
	if req != want {
		t.Errorf("got %+v, want %+v", req, want)
	}
}

// TestUnreachableBroker checks that a broker where nothing listens gives a
// 502 with a clear message within the request's timeout, on both channels.
func TestUnreachableBroker(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s := NewServer(Config{})
	for _, ch := range []string{"kafka", "grpc"} {
		start := time.Now()
		code, out := post(t, s, `{"broker": "`+addr+`", "client_id": "1", "channel": "`+ch+`", "timeout_s": 3}`)
		el := time.Since(start)
		msg, _ := out["error"].(string)
		if code != http.StatusBadGateway && code != http.StatusGatewayTimeout {
			t.Errorf("%s: status %d (%q), want 502 or 504", ch, code, msg)
		}
		if !strings.Contains(msg, addr) {
			t.Errorf("%s: error %q does not name the address %s", ch, msg, addr)
		}
		if el > 8*time.Second {
			t.Errorf("%s: answered after %v; the timeout was 3 s", ch, el)
		}
	}
}
