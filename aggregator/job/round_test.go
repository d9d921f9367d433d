package job

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/client/dialcache"
	"github.com/fdxkafka/fdxkafka/function"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
)

// waitModel waits until the job has published the model of round r.
func waitModel(ctx context.Context, t *testing.T, grpc bool, addr, job string, r int64) {
	t.Helper()
	var ch channel.Client
	var err error
	if grpc {
		ch, err = grpcchan.Dial(ctx, grpcchan.ClientOptions{Addr: addr, Job: job})
	} else {
		ch, err = kafkachan.Dial(ctx, kafkachan.ClientOptions{Options: kafkachan.Options{Brokers: addr, Job: job}})
	}
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, err := ch.Model(ctx, r); err != nil {
		t.Fatalf("wait for model %d: %v", r, err)
	}
}

// startSmallJob runs a one-client synthetic job of the given rounds on
// Kafka or gRPC and returns its spec, the address clients use, and its
// outcome.
func startSmallJob(ctx context.Context, t *testing.T, grpc bool, rounds int, data *dataset.Catalog) (Spec, string, <-chan error) {
	t.Helper()
	o := Spec{Job: kafkatest.Job(t), Rounds: RoundsSpec{MinClients: 1, NumRounds: rounds},
		Data: DataSpec{Dataset: "synthetic", MaxExamples: 50, EvalExamples: 100}}
	r := resolve(t, o, data)
	cc := ChannelConfig{Transport: GRPC, Listen: "127.0.0.1:0"}
	if !grpc {
		cc = ChannelConfig{Transport: Kafka, Brokers: kafkatest.Brokers(t)}
	}
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		_, err := RunOn(ctx, r, cc, Env{}, func(a string) { addr <- a })
		done <- err
	}()
	select {
	case a := <-addr:
		return o, a, done
	case err := <-done:
		t.Fatalf("job: %v", err)
	}
	return o, "", done
}

// post POSTs a JSON body and returns the status and the answer.
func post(t *testing.T, url, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestRoundField checks the function's "round" field on both channels: a
// closed round answers 409, the open one trains.
func TestRoundField(t *testing.T) {
	for _, grpc := range []bool{false, true} {
		name := map[bool]string{false: "kafka", true: "grpc"}[grpc]
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			data := dataset.NewCatalog()
			fn := httptest.NewServer(function.NewServer(function.Config{Data: data}))
			defer fn.Close()
			o, a, done := startSmallJob(ctx, t, grpc, 2, data)
			callJob := func(job, timeout, body string) (int, string) {
				t.Helper()
				return post(t, fn.URL, `{"broker": "`+a+`", "channel": "`+name+`", "job": "`+job+`", "timeout_s": `+timeout+`, `+body+`}`)
			}
			call := func(body string) (int, string) { return callJob(o.Job, "60", body) }
			// A job nobody runs: the function waits for it within its
			// timeout, then answers 404.
			if code, body := callJob(o.Job+"-nobody", "1", `"client_id": "a"`); code != http.StatusNotFound || !strings.Contains(body, "job not found") {
				t.Errorf("job that does not exist: %d %s; want 404 job not found", code, body)
			}
			if code, body := call(`"client_id": "a", "round": 1`); code != http.StatusOK || !strings.Contains(body, `"round":1`) {
				t.Fatalf("round 1: %d %s", code, body)
			}
			// Round 1 closed with one update; once model 2 is out, asking
			// for round 1 is too late.
			waitModel(ctx, t, grpc, a, o.Job, 2)
			if code, body := call(`"client_id": "b", "round": 1`); code != http.StatusConflict || !strings.Contains(body, "round already closed") {
				t.Errorf("closed round: %d %s; want 409", code, body)
			}
			if code, body := call(`"client_id": "b", "round": 2`); code != http.StatusOK || !strings.Contains(body, `"round":2`) {
				t.Errorf("round 2: %d %s", code, body)
			}
			if err := <-done; err != nil {
				t.Fatalf("job: %v", err)
			}
			if !grpc {
				// The job has finished (its final model is on the topic):
				// asking for one of its rounds is too late, not a success.
				if code, body := call(`"client_id": "c", "round": 2`); code != http.StatusConflict || !strings.Contains(body, "round already closed") {
					t.Errorf("round of a finished job: %d %s; want 409", code, body)
				}
			}
		})
	}
}

// TestWarmInvocations: a function instance with a channel cache reuses the
// channel of one invocation for the next (the answer says warm), and each
// answer counts its own traffic only.
func TestWarmInvocations(t *testing.T) {
	for _, grpc := range []bool{false, true} {
		name := map[bool]string{false: "kafka", true: "grpc"}[grpc]
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			data := dataset.NewCatalog()
			cache := dialcache.New(dialcache.Options{})
			defer cache.Close()
			fn := httptest.NewServer(function.NewServer(function.Config{Data: data, Cache: cache}))
			defer fn.Close()
			o, a, done := startSmallJob(ctx, t, grpc, 3, data)
			var first int64
			for round := 1; round <= 3; round++ {
				code, b := post(t, fn.URL, fmt.Sprintf(`{"broker": %q, "channel": %q, "job": %q, "client_id": "a", "round": %d, "timeout_s": 60}`, a, name, o.Job, round))
				var r function.Response
				if code != http.StatusOK || json.Unmarshal([]byte(b), &r) != nil {
					t.Fatalf("round %d: %d %s", round, code, b)
				}
				if want := round > 1; r.Warm != want {
					t.Errorf("round %d: warm %v, want %v", round, r.Warm, want)
				}
				if round == 1 {
					first = r.MessagesReceived
				} else if r.MessagesReceived > first {
					t.Errorf("round %d: %d messages received, more than the cold invocation's %d: counted across invocations", round, r.MessagesReceived, first)
				}
			}
			if err := <-done; err != nil {
				t.Fatalf("job: %v", err)
			}
		})
	}
}
