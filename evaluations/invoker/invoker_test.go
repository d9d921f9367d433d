package invoker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func payload(i int) ([]byte, error) {
	return json.Marshal(map[string]any{"broker": "10.0.0.5:9092", "client_id": fmt.Sprint(i), "channel": "kafka"})
}

// flaky answers 503 to the first two attempts of every client id and 200
// to the third, holding each request a little so that concurrency shows.
type flaky struct {
	mu       sync.Mutex
	seen     map[string]int
	inFlight atomic.Int64
	peak     atomic.Int64
	hold     time.Duration
}

func (f *flaky) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for p := f.peak.Load(); n > p && !f.peak.CompareAndSwap(p, n); p = f.peak.Load() {
	}
	var req struct {
		ClientID string `json:"client_id"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	time.Sleep(f.hold)
	f.mu.Lock()
	f.seen[req.ClientID]++
	n = int64(f.seen[req.ClientID])
	f.mu.Unlock()
	if n <= 2 {
		http.Error(w, `{"error":"cold start"}`, http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintf(w, `{"client_id":%q}`, req.ClientID)
}

func TestRetriesUntilSuccess(t *testing.T) {
	f := &flaky{seen: map[string]int{}, hold: 20 * time.Millisecond}
	srv := httptest.NewServer(f)
	defer srv.Close()
	sum, out, err := Run(context.Background(), Config{
		URL: srv.URL, N: 7, Concurrency: 3, Body: payload, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Succeeded != 7 || sum.Failed != 0 || sum.Attempts != 21 || sum.Retries != 14 {
		t.Errorf("summary %+v: want 7 successes after 21 attempts (14 retries)", sum)
	}
	if sum.FinalStatus[200] != 7 || len(sum.FinalStatus) != 1 {
		t.Errorf("final statuses %v, want 7 x 200", sum.FinalStatus)
	}
	if sum.AttemptStatus[503] != 14 || sum.AttemptStatus[200] != 7 {
		t.Errorf("attempt statuses %v, want 14 x 503 and 7 x 200", sum.AttemptStatus)
	}
	for i, o := range out {
		if o.Index != i || !o.OK() || o.Attempts != 3 || !strings.Contains(o.Body, fmt.Sprintf(`"%d"`, i)) || o.LatencyMs < o.LastMs {
			t.Errorf("outcome %d: %+v", i, o)
		}
	}
	if p := f.peak.Load(); p > 3 {
		t.Errorf("server saw %d requests at once; concurrency is 3", p)
	}
	if sum.MaxInFlight > 3 || sum.MaxInFlight < 2 {
		t.Errorf("max in flight %d, want 2 or 3 (bounded by 3, and 7 slow invocations overlap)", sum.MaxInFlight)
	}
	if sum.Latency.P50 <= 0 || sum.Latency.Max < sum.Latency.P90 || sum.Latency.P90 < sum.Latency.P50 {
		t.Errorf("latency %+v", sum.Latency)
	}
	var b bytes.Buffer
	if err := WriteSummary(&b, sum); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"7 succeeded", "| 503 Service Unavailable | 0 | 14 |", "| 200 OK | 7 | 7 |", "p99"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary text lacks %q:\n%s", want, b.String())
		}
	}
}

func TestConcurrencyIsBounded(t *testing.T) {
	for _, limit := range []int{1, 4} {
		f := &flaky{seen: map[string]int{}, hold: 15 * time.Millisecond}
		srv := httptest.NewServer(f)
		_, _, err := Run(context.Background(), Config{URL: srv.URL, N: 12, Concurrency: limit, Body: payload, Backoff: time.Millisecond})
		srv.Close()
		if err != nil {
			t.Fatal(err)
		}
		if p := f.peak.Load(); p > int64(limit) || p < 1 {
			t.Errorf("concurrency %d: server saw %d at once", limit, p)
		}
	}
}

func TestNoRetryOnClientError(t *testing.T) {
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, `{"error":"client_id: missing","field":"client_id"}`, http.StatusBadRequest)
	}))
	defer srv.Close()
	sum, out, err := Run(context.Background(), Config{URL: srv.URL, N: 2, Body: payload, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 2 || sum.Failed != 2 || sum.Retries != 0 || sum.FinalStatus[400] != 2 {
		t.Errorf("calls %d, summary %+v: want 2 failures without retries", calls.Load(), sum)
	}
	if !strings.Contains(out[0].Err, "HTTP 400") || !strings.Contains(out[0].Err, "client_id") {
		t.Errorf("error %q should carry the status and the answer", out[0].Err)
	}
}

func TestRetryAfterAndGivingUp(t *testing.T) {
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "slow down", http.StatusTooManyRequests)
	}))
	defer srv.Close()
	start := time.Now()
	sum, out, err := Run(context.Background(), Config{
		URL: srv.URL, N: 1, Body: payload, MaxAttempts: 3, Backoff: time.Millisecond, MaxBackoff: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Retry-After (1 s) is capped by MaxBackoff: two waits of 300 ms.
	if el := time.Since(start); el < 600*time.Millisecond || el > 5*time.Second {
		t.Errorf("took %v, want two capped waits of 300 ms", el)
	}
	if calls.Load() != 3 || out[0].Attempts != 3 || sum.FinalStatus[429] != 1 || sum.AttemptStatus[429] != 3 || sum.Failed != 1 {
		t.Errorf("calls %d, outcome %+v, summary %+v: want 3 attempts, all 429", calls.Load(), out[0], sum)
	}
}

func TestUnreachableIsRetriedThenReported(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	sum, out, err := Run(context.Background(), Config{URL: url, N: 1, Body: payload, MaxAttempts: 2, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if out[0].Status != 0 || out[0].Attempts != 2 || !strings.Contains(out[0].Err, url) || sum.FinalStatus[0] != 1 {
		t.Errorf("outcome %+v, summary %+v: want 2 attempts without an answer", out[0], sum)
	}
}

func TestBadConfig(t *testing.T) {
	if _, _, err := Run(context.Background(), Config{N: 1, Body: payload}); err == nil || !strings.Contains(err.Error(), "URL") {
		t.Errorf("no URL: %v", err)
	}
	if _, _, err := Run(context.Background(), Config{URL: "http://x", N: 1}); err == nil || !strings.Contains(err.Error(), "payload") {
		t.Errorf("no payload: %v", err)
	}
}
