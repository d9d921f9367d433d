package job

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/function"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/internal/testcerts"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
)

// TestKafkaSecured runs a job end to end on kafka.sh's secure broker: the
// aggregator as its SASL principal, three clients through the function as
// the client principal, with only the ACLs `kafka.sh acls JOB` grants.
// A function holding a wrong password is refused with 403 and says why,
// and nothing it sent reaches the model. It runs once on the broker's
// SASL_PLAINTEXT listener and once on its SASL_SSL one, where every
// client verifies the broker's certificate against the test CA.
func TestKafkaSecured(t *testing.T) {
	sb := kafkatest.SecureBroker(t)
	t.Run("SASL_PLAINTEXT", func(t *testing.T) { kafkaSecured(t, sb, "SASL_PLAINTEXT") })
	t.Run("SASL_SSL", func(t *testing.T) { kafkaSecured(t, sb.TLS(t), "SASL_SSL") })
}

func kafkaSecured(t *testing.T, sb *kafkatest.Secure, protocol string) {
	for _, role := range []string{"aggregator", "client"} {
		if p := sb.Props(t, role)["security.protocol"]; p != protocol {
			t.Fatalf("%s properties of %s: security.protocol %q, want %s", role, sb.Brokers, p, protocol)
		}
	}
	o := Spec{Job: kafkatest.Job(t), Seed: 5, Rounds: RoundsSpec{MinClients: 3, NumRounds: 2},
		Data: DataSpec{Dataset: "synthetic", MaxExamples: 60, EvalExamples: 200, Partition: dataset.PartitionSpec{NumPartitions: 3}}}
	cc := ChannelConfig{Transport: Kafka, Brokers: sb.Brokers, KafkaProperties: sb.Props(t, "aggregator")}
	sb.Grant(t, o.Job)
	data := dataset.NewCatalog()
	cliProps := sb.Props(t, "client")
	good := httptest.NewServer(function.NewServer(function.Config{Data: data, Defaults: function.Defaults{Broker: sb.Brokers}, Transport: participant.Transport{KafkaProperties: cliProps}}))
	defer good.Close()
	badProps := maps.Clone(cliProps)
	badProps["sasl.password"] = "guessed"
	bad := httptest.NewServer(function.NewServer(function.Config{Data: data, Defaults: function.Defaults{Broker: sb.Brokers}, Transport: participant.Transport{KafkaProperties: badProps}}))
	defer bad.Close()
	// Over TLS, a function that trusts another CA must refuse the broker.
	var untrusting *httptest.Server
	if protocol == "SASL_SSL" {
		otherCA := maps.Clone(cliProps)
		otherCA["ssl.ca.location"] = testcerts.Generate(t, t.TempDir()).CA
		untrusting = httptest.NewServer(function.NewServer(function.Config{Data: data, Transport: participant.Transport{KafkaProperties: otherCA}}))
		defer untrusting.Close()
	}

	post := func(url, client string, rounds int) (int, string) {
		body := fmt.Sprintf(`{"broker": %q, "channel": "kafka", "job": %q, "client_id": %q, "rounds": %d, "timeout_s": 120}`,
			sb.Brokers, o.Job, client, rounds)
		resp, err := http.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	ready := func(string) {
		for i := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, body := post(good.URL, fmt.Sprint(i), o.Rounds.NumRounds)
				var r function.Response
				if code != http.StatusOK {
					errs <- fmt.Errorf("client %d: HTTP %d: %s", i, code, body)
				} else if err := json.Unmarshal([]byte(body), &r); err != nil || len(r.Rounds) != o.Rounds.NumRounds {
					errs <- fmt.Errorf("client %d: summary %s (%v): want %d rounds", i, body, err, o.Rounds.NumRounds)
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body := post(bad.URL, "intruder", 1)
			if code != http.StatusForbidden || !strings.Contains(body, "SASL") {
				errs <- fmt.Errorf("function with a wrong password: HTTP %d %s; want 403 naming the SASL login", code, body)
			}
		}()
		if untrusting != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, body := post(untrusting.URL, "mistrusted", 1)
				t.Logf("function trusting another CA: HTTP %d %s", code, strings.TrimSpace(body))
				if code == http.StatusOK || !strings.Contains(body, "certificate") {
					errs <- fmt.Errorf("function trusting another CA: HTTP %d %s; want a failure naming the certificate", code, body)
				}
			}()
		}
	}
	res, err := RunOn(ctx, resolve(t, o, data), cc, Env{}, ready)
	if err != nil {
		t.Fatalf("secure kafka job: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(res.Rounds) != o.Rounds.NumRounds || res.Final.GetRound() != int64(o.Rounds.NumRounds+1) || !res.Final.GetFinal() {
		t.Fatalf("%d rounds, final round %d (final %v); want %d rounds and a final round %d", len(res.Rounds), res.Final.GetRound(), res.Final.GetFinal(), o.Rounds.NumRounds, o.Rounds.NumRounds+1)
	}
	for _, r := range res.Rounds {
		if len(r.Contributors) != 3 || strings.Contains(strings.Join(r.Contributors, ","), "intruder") || strings.Contains(strings.Join(r.Contributors, ","), "mistrusted") {
			t.Errorf("round %d contributors %v; want clients 0, 1, 2", r.Round, r.Contributors)
		}
	}
	if len(res.Rejected) != 0 {
		t.Errorf("rejections %v; want none", res.Rejected)
	}
}
