package grpcchan

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fdxkafka/fdxkafka/internal/testcerts"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
)

var testTokens = map[string]string{"a": "token-of-a", "b": "token-of-b"}

// wantUnauthenticated checks that err, as the client returns it (wrapped
// with context), still carries the gRPC status Unauthenticated for every
// way a caller may look for it, and says what is wrong.
func wantUnauthenticated(t *testing.T, what string, err error, msg string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s succeeded; want Unauthenticated", what)
		return
	}
	if got := status.Code(err); got != codes.Unauthenticated {
		t.Errorf("%s: status.Code = %v (%v); want Unauthenticated", what, got, err)
	}
	if st, ok := status.FromError(err); !ok || st.Code() != codes.Unauthenticated {
		t.Errorf("%s: status.FromError = %v, %v; want Unauthenticated", what, st, ok)
	}
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) || se.GRPCStatus().Code() != codes.Unauthenticated {
		t.Errorf("%s: no Unauthenticated status in the error chain of %v", what, err)
	}
	if !errors.Is(err, channel.ErrUnauthenticated) {
		t.Errorf("%s: %v does not wrap channel.ErrUnauthenticated", what, err)
	}
	if errors.Is(err, channel.ErrUnreachable) {
		t.Errorf("%s: %v is marked unreachable; a refused token is not worth retrying", what, err)
	}
	if !strings.Contains(err.Error(), msg) {
		t.Errorf("%s: error %q; want it to say %q", what, err, msg)
	}
}

func TestTokens(t *testing.T) {
	f := testcerts.Generate(t, t.TempDir())
	opt := serverTLS(t, f, "")
	opt.Tokens = testTokens
	s := startServer(t, opt)
	client := func(id, token string) *Client {
		o := clientOpts(t, s, f.CA, "", "", "")
		o.ClientID, o.Token = id, token
		// Dial checks health, which needs no token: every client
		// here connects, whatever its token.
		return dialClient(t, o)
	}
	ctx := testCtx(t)

	t.Run("correct token", func(t *testing.T) {
		roundTrip(t, s, client("a", testTokens["a"]), "a")
	})
	t.Run("no token", func(t *testing.T) {
		c := client("a", "")
		_, err := c.Model(ctx, 0)
		wantUnauthenticated(t, "Model without a token", err, "missing or unknown bearer token")
		err = c.Submit(ctx, &fdxv1.Update{Job: testJob, ClientId: "a", BaseRound: 1})
		wantUnauthenticated(t, "Submit without a token", err, "missing or unknown bearer token")
	})
	t.Run("wrong token", func(t *testing.T) {
		c := client("a", "not-a-token")
		_, err := c.Model(ctx, 0)
		wantUnauthenticated(t, "Model with a wrong token", err, "missing or unknown bearer token")
		err = c.Submit(ctx, &fdxv1.Update{Job: testJob, ClientId: "a", BaseRound: 1})
		wantUnauthenticated(t, "Submit with a wrong token", err, "missing or unknown bearer token")
	})
	t.Run("another client's token", func(t *testing.T) {
		// b's token opens the door for reading the model, but does
		// not let b submit in a's name.
		c := client("a", testTokens["b"])
		if _, err := c.Model(ctx, 0); err != nil {
			t.Errorf("Model with a known token: %v", err)
		}
		err := c.Submit(ctx, &fdxv1.Update{Job: testJob, ClientId: "a", BaseRound: 1})
		wantUnauthenticated(t, "Submit as a with b's token", err, `client "a"`)
		err = c.Submit(ctx, &fdxv1.Update{Job: testJob, ClientId: "unlisted", BaseRound: 1})
		wantUnauthenticated(t, "Submit as an unlisted client", err, `client "unlisted"`)
	})
}

// TestTokensRawCalls covers what Client does not: the streaming call and
// the health service reached without any token.
func TestTokensRawCalls(t *testing.T) {
	s := startServer(t, ServerOptions{Tokens: testTokens})
	if err := s.Publish(testCtx(t), &fdxv1.GlobalModel{Job: testJob, Round: 1}); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := testCtx(t)

	hc := healthpb.NewHealthClient(conn)
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: fdxv1.Aggregator_ServiceDesc.ServiceName})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health check without a token = %v, %v; want SERVING", resp, err)
	}

	api := fdxv1.NewAggregatorClient(conn)
	stream, err := api.WatchModels(ctx, &fdxv1.WatchModelsRequest{Job: testJob, FromRound: 1})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("WatchModels without a token: %v; want Unauthenticated", err)
	}

	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+testTokens["b"])
	stream, err = api.WatchModels(authed, &fdxv1.WatchModelsRequest{Job: testJob, FromRound: 1})
	if err != nil {
		t.Fatalf("WatchModels with a token: %v", err)
	}
	if m, err := stream.Recv(); err != nil || m.GetRound() != 1 {
		t.Errorf("WatchModels with a token = %v, %v; want round 1", m, err)
	}
}
