package function_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/function"
)

// fuzzDefaults are the two environments FuzzParseRequest parses each input
// in: none at all, and every default set.
var fuzzDefaults = []function.Defaults{
	{},
	{Broker: "kafka:9092", Job: "fashion", Channel: "grpc"},
}

// checkRequest checks the invariants of ParseRequest's result for any input.
func checkRequest(t *testing.T, req function.Request, err error) {
	t.Helper()
	if err != nil {
		var fe *function.FieldError
		if !errors.As(err, &fe) {
			t.Fatalf("error %v (%T) is not a *FieldError", err, err)
		}
		if fe.Field == "" || fe.Msg == "" {
			t.Fatalf("FieldError %+v without a field or a message", fe)
		}
		if req != (function.Request{}) {
			t.Fatalf("error %v with a non-zero request %+v", err, req)
		}
		return
	}
	switch {
	case req.ClientID == "" || len(req.ClientID) > 128:
		t.Fatalf("client id %q of %d bytes, want 1 to 128", req.ClientID, len(req.ClientID))
	case req.Channel != "kafka" && req.Channel != "grpc":
		t.Fatalf("channel %q, want kafka or grpc", req.Channel)
	case req.Rounds < 1 || req.Rounds > 1000:
		t.Fatalf("rounds %d, want 1 to 1000", req.Rounds)
	case req.Timeout <= 0 || req.Timeout > time.Hour:
		t.Fatalf("timeout %v, want more than 0 and at most 1h", req.Timeout)
	case strings.TrimSpace(req.Broker) == "":
		t.Fatalf("broker %q is blank", req.Broker)
	case req.Job == "":
		t.Fatal("no job")
	case req.Round < 0:
		t.Fatalf("round %d is negative", req.Round)
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"broker": "b:9092", "client_id": "1", "channel": "kafka"}`))
	f.Add([]byte(`{"client_id": 0, "round": 0, "rounds": 1, "timeout_s": 0.001}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, def := range fuzzDefaults {
			req, err := function.ParseRequest(bytes.NewReader(data), def)
			checkRequest(t, req, err)
			if err != nil {
				continue
			}
			// A parsed request is normalized: written back as JSON it
			// parses to itself.
			again, err := function.ParseRequest(bytes.NewReader(requestJSON(t, req)), function.Defaults{})
			if err != nil {
				t.Fatalf("%+v written back as JSON does not parse: %v", req, err)
			}
			if d := again.Timeout - req.Timeout; d < -time.Nanosecond || d > time.Nanosecond {
				t.Fatalf("timeout %v parses back as %v", req.Timeout, again.Timeout)
			}
			again.Timeout = req.Timeout
			if again != req {
				t.Fatalf("%+v parses back as %+v", req, again)
			}
		}
	})
}

func requestJSON(t *testing.T, req function.Request) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"broker": req.Broker, "client_id": req.ClientID, "channel": req.Channel, "job": req.Job,
		"round": req.Round, "rounds": req.Rounds, "timeout_s": req.Timeout.Seconds(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFuzzParseRequestCorpus checks that the checked-in seeds of
// FuzzParseRequest get the verdicts their names promise, without defaults.
func TestFuzzParseRequestCorpus(t *testing.T) {
	const ok = "" // parses
	want := map[string]string{
		"valid_minimal":            ok,
		"valid_all_fields":         ok,
		"valid_max_limits":         ok,
		"defaults_only":            "broker",
		"client_id_too_long":       "client_id",
		"client_id_over_int63":     "client_id",
		"client_id_fraction":       "client_id",
		"client_id_blank":          "client_id",
		"client_id_invalid_utf8":   ok, // replaced by U+FFFD, as encoding/json does
		"rounds_over_limit":        "rounds",
		"rounds_overflow":          "rounds",
		"timeout_over_hour":        "timeout_s",
		"timeout_huge":             "timeout_s",
		"timeout_below_nanosecond": "timeout_s",
		"unknown_field":            "clientid",
		"unknown_empty_field":      "body",
		"not_an_object":            "body",
		"trailing_data":            "body",
		"truncated":                "body",
		"bad_job":                  "job",
		"null":                     "broker",
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParseRequest")
	files, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(want) {
		t.Errorf("%s holds %d files, want %d", dir, len(files), len(want))
	}
	for name, field := range want {
		t.Run(name, func(t *testing.T) {
			text, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			lit, found := strings.CutPrefix(strings.TrimSpace(string(text)), "go test fuzz v1\n[]byte(")
			if !found || !strings.HasSuffix(lit, ")") {
				t.Fatal("not a go test fuzz v1 file with one []byte")
			}
			body, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
			if err != nil {
				t.Fatal(err)
			}
			req, err := function.ParseRequest(strings.NewReader(body), function.Defaults{})
			var fe *function.FieldError
			switch {
			case field == ok && err != nil:
				t.Errorf("ParseRequest(%s): %v, want success", body, err)
			case field != ok && (!errors.As(err, &fe) || fe.Field != field):
				t.Errorf("ParseRequest(%s) = %+v, %v; want an error in field %q", body, req, err, field)
			}
		})
	}
}
