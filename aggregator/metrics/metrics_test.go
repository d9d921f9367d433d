package metrics_test

import (
	"context"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/fdxkafka/fdxkafka/aggregator/coordinator"
	"github.com/fdxkafka/fdxkafka/aggregator/metrics"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// Client ids distinctive enough that finding them anywhere in the
// exposition means they leaked into labels.
const (
	alice   = "alice-7f3a91"
	bob     = "bob-91c2d4"
	carol   = "carol-0d5e66"
	mallory = "mallory-e1b7"
	trudy   = "trudy-44af0c"
)

// serve starts m's handler on a free loopback port and returns its base URL.
func serve(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	addr, err := metrics.Serve(ctx, "127.0.0.1:0", m.Handler(), nil)
	if err != nil {
		t.Fatalf("Serve: %v", err)
	}
	return "http://" + addr
}

func get(t *testing.T, url string) (status int, body string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// scrape fetches /metrics and parses the text exposition.
func scrape(t *testing.T, base string) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	status, body := get(t, base+"/metrics")
	if status != http.StatusOK {
		t.Fatalf("GET /metrics: status %d, body %q", status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing exposition: %v\n%s", err, body)
	}
	return fams, body
}

// find returns the one series of family name whose labels include want.
func find(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	t.Helper()
	fam, ok := fams[name]
	if !ok {
		t.Fatalf("metric %s missing", name)
	}
	var found *dto.Metric
	for _, m := range fam.GetMetric() {
		if hasLabels(m, want) {
			if found != nil {
				t.Fatalf("metric %s: more than one series with labels %v", name, want)
			}
			found = m
		}
	}
	if found == nil {
		t.Fatalf("metric %s: no series with labels %v", name, want)
	}
	return found
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	got := map[string]string{}
	for _, lp := range m.GetLabel() {
		got[lp.GetName()] = lp.GetValue()
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// value returns the value of a counter, gauge or untyped series.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	m := find(t, fams, name, labels)
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	t.Fatalf("metric %s is neither counter, gauge nor untyped", name)
	return 0
}

func checkValue(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string, want float64) {
	t.Helper()
	if got := value(t, fams, name, labels); math.Abs(got-want) > 1e-9 {
		t.Errorf("%s %v = %v, want %v", name, labels, got, want)
	}
}

func checkHistogram(t *testing.T, fams map[string]*dto.MetricFamily, name string, wantCount uint64, wantSum float64) {
	t.Helper()
	h := find(t, fams, name, nil).GetHistogram()
	if h == nil {
		t.Fatalf("metric %s is not a histogram", name)
	}
	if got := h.GetSampleCount(); got != wantCount {
		t.Errorf("%s_count = %d, want %d", name, got, wantCount)
	}
	if got := h.GetSampleSum(); math.Abs(got-wantSum) > 1e-9 {
		t.Errorf("%s_sum = %v, want %v", name, got, wantSum)
	}
	// The buckets must cover the documented 10 ms to 10 min range.
	b := h.GetBucket()
	if len(b) == 0 || b[0].GetUpperBound() > 0.01 || b[len(b)-1].GetUpperBound() < 600 {
		t.Errorf("%s buckets %v..%v do not span 0.01..600 s", name, b[0].GetUpperBound(), b[len(b)-1].GetUpperBound())
	}
}

// drive plays two rounds: three accepted updates, two rejected for
// different reasons.
func drive(m *metrics.Metrics) {
	m.RoundStarted(1)
	m.UpdateAccepted(alice, 100)
	m.UpdateAccepted(bob, 200)
	m.UpdateRejected(rules.Duplicate, alice, 50)
	m.RoundClosed(coordinator.RoundRecord{
		Round: 1, Clients: 2, Contributors: []string{alice, bob}, Examples: 600,
		Accuracy: 0.5, Loss: 1.25, DurationMs: 1500, AggregateMs: 20,
		Rejected: map[string]int64{string(rules.Duplicate): 1},
	})
	m.RoundStarted(2)
	m.UpdateAccepted(carol, 300)
	m.UpdateRejected(rules.NormBound, mallory, 70)
	m.RoundClosed(coordinator.RoundRecord{
		Round: 2, Clients: 1, Contributors: []string{carol}, Examples: 300,
		Accuracy: 0.75, Loss: 0.875, DurationMs: 2500, AggregateMs: 30,
		Rejected: map[string]int64{string(rules.NormBound): 1},
	})
}

func TestObserverExposition(t *testing.T) {
	m := metrics.New("job-a", "kafka")
	base := serve(t, m)
	drive(m)

	fams, body := scrape(t, base)
	jobLabels := map[string]string{"fdx_job": "job-a", "channel": "kafka"}

	checkValue(t, fams, "fdx_rounds_completed_total", jobLabels, 2)
	checkValue(t, fams, "fdx_current_round", jobLabels, 2)
	checkValue(t, fams, "fdx_updates_accepted_total", jobLabels, 3)
	checkValue(t, fams, "fdx_update_bytes_total", map[string]string{"result": "accepted"}, 600)
	checkValue(t, fams, "fdx_update_bytes_total", map[string]string{"result": "rejected"}, 120)
	checkValue(t, fams, "fdx_round_clients", jobLabels, 1)
	checkValue(t, fams, "fdx_model_accuracy_ratio", jobLabels, 0.75)
	checkValue(t, fams, "fdx_model_loss", jobLabels, 0.875)
	checkHistogram(t, fams, "fdx_round_duration_seconds", 2, 4.0)
	checkHistogram(t, fams, "fdx_aggregation_duration_seconds", 2, 0.05)

	wantRejected := map[rules.Reason]float64{rules.Duplicate: 1, rules.NormBound: 1}
	for _, r := range rules.Reasons() {
		checkValue(t, fams, "fdx_updates_rejected_total", map[string]string{"reason": string(r)}, wantRejected[r])
	}
	if got, want := len(fams["fdx_updates_rejected_total"].GetMetric()), len(rules.Reasons()); got != want {
		t.Errorf("fdx_updates_rejected_total has %d series, want one per reason (%d)", got, want)
	}

	for name, fam := range fams {
		if !strings.HasPrefix(name, "fdx_") {
			continue
		}
		for _, s := range fam.GetMetric() {
			if !hasLabels(s, jobLabels) {
				t.Errorf("%s series %v lacks job and channel labels", name, s.GetLabel())
			}
		}
	}
	if _, ok := fams["go_goroutines"]; !ok {
		t.Error("Go collector metrics missing")
	}
	for _, id := range []string{alice, bob, carol, mallory} {
		if strings.Contains(body, id) {
			t.Errorf("client id %q appears in the exposition", id)
		}
	}
	if _, ok := fams["fdx_channel_messages_total"]; ok {
		t.Error("fdx_channel_messages_total exported before TrafficFunc was set")
	}
}

func TestTrafficReadAtScrape(t *testing.T) {
	m := metrics.New("job-t", "grpc")
	base := serve(t, m)
	var sent, recv atomic.Int64
	sent.Store(3)
	recv.Store(5)
	m.TrafficFunc(func() (msgsSent, msgsRecv, bytesSent, bytesRecv int64) {
		s, r := sent.Load(), recv.Load()
		return s, r, 100 * s, 100 * r
	})

	fams, _ := scrape(t, base)
	checkValue(t, fams, "fdx_channel_messages_total", map[string]string{"direction": "sent", "fdx_job": "job-t", "channel": "grpc"}, 3)
	checkValue(t, fams, "fdx_channel_messages_total", map[string]string{"direction": "received"}, 5)
	checkValue(t, fams, "fdx_channel_bytes_total", map[string]string{"direction": "sent"}, 300)
	checkValue(t, fams, "fdx_channel_bytes_total", map[string]string{"direction": "received"}, 500)
	if typ := fams["fdx_channel_bytes_total"].GetType(); typ != dto.MetricType_COUNTER {
		t.Errorf("fdx_channel_bytes_total type %v, want counter", typ)
	}

	sent.Store(7)
	fams, _ = scrape(t, base)
	checkValue(t, fams, "fdx_channel_messages_total", map[string]string{"direction": "sent"}, 7)
	checkValue(t, fams, "fdx_channel_bytes_total", map[string]string{"direction": "sent"}, 700)

	m.TrafficFunc(nil)
	fams, _ = scrape(t, base)
	if _, ok := fams["fdx_channel_messages_total"]; ok {
		t.Error("fdx_channel_messages_total still exported after TrafficFunc(nil)")
	}
}

func TestHealthAndReadiness(t *testing.T) {
	m := metrics.New("job-r", "kafka")
	base := serve(t, m)

	if status, body := get(t, base+"/healthz"); status != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz = %d %q, want 200 \"ok\"", status, body)
	}
	if status, _ := get(t, base+"/readyz"); status != http.StatusServiceUnavailable {
		t.Errorf("/readyz before SetReady(true) = %d, want 503", status)
	}
	m.SetReady(true)
	if status, _ := get(t, base+"/readyz"); status != http.StatusOK {
		t.Errorf("/readyz after SetReady(true) = %d, want 200", status)
	}
	m.SetReady(false)
	if status, _ := get(t, base+"/readyz"); status != http.StatusServiceUnavailable {
		t.Errorf("/readyz after SetReady(false) = %d, want 503", status)
	}
	if status, _ := get(t, base+"/healthz"); status != http.StatusOK {
		t.Errorf("/healthz while not ready = %d, want 200", status)
	}
}

// TestIndependentInstances checks that two jobs in one process neither
// panic on registration nor see each other's counts.
func TestIndependentInstances(t *testing.T) {
	a := metrics.New("job-1", "kafka")
	b := metrics.New("job-2", "kafka")
	a.RoundClosed(coordinator.RoundRecord{Round: 1})
	a.UpdateRejected(rules.Oversize, trudy, 10)

	fams, _ := scrape(t, serve(t, b))
	checkValue(t, fams, "fdx_rounds_completed_total", map[string]string{"fdx_job": "job-2"}, 0)
	checkValue(t, fams, "fdx_updates_rejected_total", map[string]string{"reason": string(rules.Oversize)}, 0)
	fams, _ = scrape(t, serve(t, a))
	checkValue(t, fams, "fdx_rounds_completed_total", map[string]string{"fdx_job": "job-1"}, 1)
	checkValue(t, fams, "fdx_updates_rejected_total", map[string]string{"reason": string(rules.Oversize)}, 1)
}

func TestServePortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()

	addr, err := metrics.Serve(t.Context(), ln.Addr().String(), http.NotFoundHandler(), nil)
	if err == nil {
		t.Fatalf("Serve on taken port %s returned %q and no error", ln.Addr(), addr)
	}
	if !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Errorf("error %q does not name the address", err)
	}
}

func TestServeStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	addr, err := metrics.Serve(ctx, "127.0.0.1:0", metrics.New("job-s", "kafka").Handler(), nil)
	if err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if status, _ := get(t, "http://"+addr+"/healthz"); status != http.StatusOK {
		t.Fatalf("/healthz = %d before cancel, want 200", status)
	}
	cancel()

	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return // The listener is closed.
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatalf("%s still accepts connections 5s after its context ended", addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
