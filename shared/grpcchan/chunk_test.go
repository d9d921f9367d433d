package grpcchan

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// lowLimit is the gRPC message limit of these tests: far below the
// messages they move, which fit only in chunks.
const lowLimit = 2 << 20

// bigTensor is n seeded random bytes as one tensor.
func bigTensor(seed uint64, n int) *fdxv1.Tensor {
	r := rand.New(rand.NewPCG(seed, 1))
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	return &fdxv1.Tensor{Name: "w", Shape: []int64{int64(n / 4)}, Dtype: fdxv1.DType_DTYPE_FLOAT32, Data: data}
}

func bigModel(round int64, mb int) *fdxv1.GlobalModel {
	return &fdxv1.GlobalModel{Job: testJob, Round: round, NumRounds: 3, Params: []*fdxv1.Tensor{bigTensor(uint64(round), mb<<20)}}
}

func bigUpdate(id string, mb int) *fdxv1.Update {
	return &fdxv1.Update{Job: testJob, ClientId: id, BaseRound: 1, NumExamples: 7, Params: []*fdxv1.Tensor{bigTensor(99, mb<<20)}}
}

// rawAPI is a plain stub on s with the low message limit, for calls the
// Client would not make.
func rawAPI(t *testing.T, s *Server) fdxv1.AggregatorClient {
	t.Helper()
	conn, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(lowLimit), grpc.MaxCallSendMsgSize(lowLimit)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return fdxv1.NewAggregatorClient(conn)
}

// deliver submits u from c and has the server's round loop accept it; it
// returns what the loop received.
func deliver(t *testing.T, ctx context.Context, s *Server, c *Client, u *fdxv1.Update) channel.Delivery {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- c.Submit(ctx, u) }()
	d, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	if d.Rejection != nil || !proto.Equal(d.Update, u) {
		t.Fatalf("Next delivered %d bytes from %q (rejection %v); want the %d-byte update of %q intact",
			d.Size, d.ClientID(), d.Rejection, proto.Size(u), u.GetClientId())
	}
	if d.Size != proto.Size(u) {
		t.Errorf("delivery size %d; want %d", d.Size, proto.Size(u))
	}
	if err := d.Accept(); err != nil {
		t.Fatalf("Accept: %v", err)
	}
	d.Reply(nil)
	if err := <-errc; err != nil {
		t.Fatalf("Submit: %v", err)
	}
	return d
}

func TestChunkedModelAndUpdateUnderLowLimit(t *testing.T) {
	ctx := testCtx(t)
	s := startServer(t, ServerOptions{MaxMessageBytes: lowLimit})
	c := dialClient(t, ClientOptions{Addr: s.Addr(), Job: testJob, ClientID: "big", MaxMessageBytes: lowLimit})
	m := bigModel(1, 12)
	if err := s.Publish(ctx, m); err != nil {
		t.Fatal(err)
	}
	// The limit is real: the unary call cannot carry the model.
	if _, err := rawAPI(t, s).GetModel(ctx, &fdxv1.GetModelRequest{Job: testJob, MinRound: 1}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("unary GetModel of a 12 MB model under a 2 MiB limit: %v; want ResourceExhausted", err)
	}
	got, err := c.Model(ctx, 1)
	if err != nil {
		t.Fatalf("Model: %v", err)
	}
	if !proto.Equal(got, m) {
		t.Fatalf("chunked model differs from the published one (%d vs %d bytes)", proto.Size(got), proto.Size(m))
	}
	deliver(t, ctx, s, c, bigUpdate("big", 16))
	// Small payloads still take the unary call.
	deliver(t, ctx, s, c, &fdxv1.Update{Job: testJob, ClientId: "small", BaseRound: 1, NumExamples: 1})
}

func TestWatchModelChunks(t *testing.T) {
	ctx := testCtx(t)
	s := startServer(t, ServerOptions{MaxMessageBytes: lowLimit})
	stream, err := rawAPI(t, s).WatchModelChunks(ctx, &fdxv1.WatchModelsRequest{Job: testJob, FromRound: 1})
	if err != nil {
		t.Fatal(err)
	}
	for round := int64(1); round <= 3; round++ {
		m := bigModel(round, 3)
		m.Final = round == 3
		if err := s.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
		whole, rej, err := receive(stream.Recv, maxTransferBytes)
		if err != nil || rej != nil {
			t.Fatalf("round %d: receive: %v, %v", round, rej, err)
		}
		got := &fdxv1.GlobalModel{}
		if err := proto.Unmarshal(whole, got); err != nil || !proto.Equal(got, m) {
			t.Fatalf("round %d: streamed model differs (%v)", round, err)
		}
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the final model: %v; want the stream to end", err)
	}
}

// sendRaw streams parts on a SubmitUpdateChunks call and returns the
// answer.
func sendRaw(t *testing.T, ctx context.Context, api fdxv1.AggregatorClient, parts []*fdxv1.TransferPart) *fdxv1.SubmitUpdateResponse {
	t.Helper()
	stream, err := api.SubmitUpdateChunks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if err := stream.Send(p); errors.Is(err, io.EOF) {
			break // refused early: the answer follows
		} else if err != nil {
			t.Fatal(err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatalf("CloseAndRecv: %v", err)
	}
	return resp
}

func parts(t *testing.T, x *encoded) []*fdxv1.TransferPart {
	t.Helper()
	var ps []*fdxv1.TransferPart
	if err := x.send(func(p *fdxv1.TransferPart) error { ps = append(ps, p); return nil }); err != nil {
		t.Fatal(err)
	}
	return ps
}

func TestChunkedUpdateRefused(t *testing.T) {
	ctx := testCtx(t)
	s := startServer(t, ServerOptions{MaxMessageBytes: lowLimit, MaxUpdateBytes: 20 << 20})
	if err := s.Publish(ctx, &fdxv1.GlobalModel{Job: testJob, Round: 1}); err != nil {
		t.Fatal(err)
	}
	api := rawAPI(t, s)
	cases := []struct {
		name   string
		mb     int
		tamper func(ps []*fdxv1.TransferPart) []*fdxv1.TransferPart
		want   rules.Reason
	}{
		{"corrupt chunk", 8, func(ps []*fdxv1.TransferPart) []*fdxv1.TransferPart {
			c := append([]byte(nil), ps[3].GetChunk()...)
			c[100] ^= 1
			ps[3] = &fdxv1.TransferPart{Part: &fdxv1.TransferPart_Chunk{Chunk: c}}
			return ps
		}, rules.Checksum},
		{"whole does not match", 8, func(ps []*fdxv1.TransferPart) []*fdxv1.TransferPart {
			man := proto.Clone(ps[0].GetManifest()).(*fdxv1.TransferManifest)
			man.Sha256[0] ^= 1
			ps[0] = &fdxv1.TransferPart{Part: &fdxv1.TransferPart_Manifest{Manifest: man}}
			return ps
		}, rules.Checksum},
		{"short chunk", 8, func(ps []*fdxv1.TransferPart) []*fdxv1.TransferPart {
			ps[2] = &fdxv1.TransferPart{Part: &fdxv1.TransferPart_Chunk{Chunk: ps[2].GetChunk()[:10]}}
			return ps
		}, rules.Checksum},
		{"sender stops after 3 chunks", 8, func(ps []*fdxv1.TransferPart) []*fdxv1.TransferPart { return ps[:4] }, rules.Incomplete},
		{"no manifest", 8, func(ps []*fdxv1.TransferPart) []*fdxv1.TransferPart { return ps[1:] }, rules.Undecodable},
		{"over MaxUpdateBytes", 21, func(ps []*fdxv1.TransferPart) []*fdxv1.TransferPart { return ps }, rules.Oversize},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x, err := encode(bigUpdate("x", tc.mb), DefaultChunkBytes)
			if err != nil {
				t.Fatal(err)
			}
			resp := sendRaw(t, ctx, api, tc.tamper(parts(t, x)))
			if resp.GetAccepted() || resp.GetRejectReason() != tc.want.Proto() {
				t.Fatalf("answer %v; want refused as %s", resp, tc.want)
			}
			d, err := s.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if d.Update != nil || d.Rejection == nil || d.Rejection.Reason != tc.want {
				t.Fatalf("round loop got update %v, rejection %v; want only a %s rejection to count", d.Update != nil, d.Rejection, tc.want)
			}
		})
	}
}

// TestChunkedUpdateDurable: an update that arrived in chunks is in the
// update log once accepted, and a restarted server replays it whole.
func TestChunkedUpdateDurable(t *testing.T) {
	ctx := testCtx(t)
	state := filepath.Join(t.TempDir(), "state.pb")
	s, err := NewServer(ServerOptions{Addr: "127.0.0.1:0", Job: testJob, StateFile: state, MaxMessageBytes: lowLimit})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Publish(ctx, &fdxv1.GlobalModel{Job: testJob, Round: 1}); err != nil {
		t.Fatal(err)
	}
	c := dialClient(t, ClientOptions{Addr: s.Addr(), Job: testJob, ClientID: "big", MaxMessageBytes: lowLimit})
	u := bigUpdate("big", 10)
	deliver(t, ctx, s, c, u)
	s.Close()

	s, err = NewServer(ServerOptions{Addr: "127.0.0.1:0", Job: testJob, StateFile: state, MaxMessageBytes: lowLimit})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if m, err := s.Latest(ctx, nil); err != nil || m.GetRound() != 1 {
		t.Fatalf("Latest after restart = %v, %v; want round 1", m, err)
	}
	d, err := s.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(d.Update, u) {
		t.Fatalf("replayed %d bytes from %q; want the %d-byte chunked update", d.Size, d.ClientID(), proto.Size(u))
	}
}

// TestChunkedUpdateSenderGone: a sender that dies mid-stream (its call
// cancelled after 3 of 8 chunks) leaves nothing but a counted
// rules.Incomplete, and the server goes on serving.
func TestChunkedUpdateSenderGone(t *testing.T) {
	ctx := testCtx(t)
	s := startServer(t, ServerOptions{MaxMessageBytes: lowLimit})
	if err := s.Publish(ctx, &fdxv1.GlobalModel{Job: testJob, Round: 1}); err != nil {
		t.Fatal(err)
	}
	x, err := encode(bigUpdate("gone", 8), DefaultChunkBytes)
	if err != nil {
		t.Fatal(err)
	}
	callCtx, cancel := context.WithCancel(ctx)
	stream, err := rawAPI(t, s).SubmitUpdateChunks(callCtx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts(t, x)[:4] {
		if err := stream.Send(p); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	d, err := s.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Update != nil || d.Rejection == nil || d.Rejection.Reason != rules.Incomplete {
		t.Fatalf("round loop got update %v, rejection %v; want only an incomplete transfer counted", d.Update != nil, d.Rejection)
	}
	c := dialClient(t, ClientOptions{Addr: s.Addr(), Job: testJob, ClientID: "next", MaxMessageBytes: lowLimit})
	deliver(t, ctx, s, c, bigUpdate("next", 3))
}

// TestChunkedUpdateTokens: a chunked update is checked against its
// client's bearer token like a unary one, once it is whole.
func TestChunkedUpdateTokens(t *testing.T) {
	ctx := testCtx(t)
	s := startServer(t, ServerOptions{MaxMessageBytes: lowLimit, Tokens: map[string]string{"big": "t-big", "other": "t-other"}})
	if err := s.Publish(ctx, &fdxv1.GlobalModel{Job: testJob, Round: 1}); err != nil {
		t.Fatal(err)
	}
	own := dialClient(t, ClientOptions{Addr: s.Addr(), Job: testJob, ClientID: "big", MaxMessageBytes: lowLimit, Token: "t-big"})
	deliver(t, ctx, s, own, bigUpdate("big", 4))

	// Another client's valid token passes the call's door, not the update.
	forger := dialClient(t, ClientOptions{Addr: s.Addr(), Job: testJob, ClientID: "other", MaxMessageBytes: lowLimit, Token: "t-other"})
	if err := forger.Submit(ctx, bigUpdate("big", 4)); !errors.Is(err, channel.ErrUnauthenticated) {
		t.Fatalf("chunked update as %q with another client's token: %v; want ErrUnauthenticated", "big", err)
	}
	d, err := s.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Rejection == nil || d.Rejection.Reason != rules.Unauthenticated {
		t.Fatalf("round loop got rejection %v; want the forged update counted as unauthenticated", d.Rejection)
	}
}
