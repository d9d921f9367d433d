package job

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/function"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/internal/testcerts"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// TestGRPCSecured runs a job over gRPC with mutual TLS and per-client
// bearer tokens, the clients going through the function: a client with its
// token trains; one with another client's token is refused with 403 and
// a clear message, and nothing it sent reaches the model.
func TestGRPCSecured(t *testing.T) {
	certs := testcerts.Generate(t, t.TempDir())
	srvTLS, err := grpcchan.ServerTLS(certs.ServerCert, certs.ServerKey, certs.CA)
	if err != nil {
		t.Fatal(err)
	}
	cliTLS, err := grpcchan.ClientTLS(certs.CA, certs.ClientCert, certs.ClientKey, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	data := dataset.NewCatalog()
	o := Spec{Job: kafkatest.Job(t), Rounds: RoundsSpec{MinClients: 1, NumRounds: 1},
		Data: DataSpec{Dataset: "synthetic", MaxExamples: 50, EvalExamples: 100}}
	r := resolve(t, o, data)
	cc := ChannelConfig{Transport: GRPC, Listen: "127.0.0.1:0",
		GRPCTLS: srvTLS, Tokens: map[string]string{"a": "tok-a", "b": "tok-b"}}
	addr := make(chan string, 1)
	type outcome struct {
		res *Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := RunOn(ctx, r, cc, Env{}, func(a string) { addr <- a })
		done <- outcome{res, err}
	}()
	a := <-addr
	// Functions holding credentials are deployed for one aggregator.
	deployed := function.Defaults{Broker: a}
	good := httptest.NewServer(function.NewServer(function.Config{Data: data, Defaults: deployed, Transport: participant.Transport{GRPCTLS: cliTLS, Token: "tok-a"}}))
	defer good.Close()
	thief := httptest.NewServer(function.NewServer(function.Config{Data: data, Defaults: deployed, Transport: participant.Transport{GRPCTLS: cliTLS, Token: "tok-a"}}))
	defer thief.Close()
	invoke := func(url, client string) (int, string) {
		return post(t, url, `{"broker": "`+a+`", "channel": "grpc", "job": "`+o.Job+`", "client_id": "`+client+`", "timeout_s": 30}`)
	}
	// Client b holds a's token: refused when it submits as b.
	if code, body := invoke(thief.URL, "b"); code != http.StatusForbidden || !strings.Contains(body, "bearer token") {
		t.Errorf("client b with a's token: %d %s; want 403 naming the token", code, body)
	}
	if code, body := invoke(good.URL, "a"); code != http.StatusOK {
		t.Fatalf("client a: %d %s", code, body)
	}
	out := <-done
	if out.err != nil {
		t.Fatal(out.err)
	}
	if got := out.res.Rounds[0].Contributors; len(got) != 1 || got[0] != "a" {
		t.Errorf("contributors %v, want [a]", got)
	}
	// The refusal is counted like every rejection.
	if n := out.res.Rejected[string(rules.Unauthenticated)]; n != 1 {
		t.Errorf("rejected %v, want one unauthenticated", out.res.Rejected)
	}
}
