package grpcchan

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// closeAsync runs s.Close and returns a channel closed when it returned.
func closeAsync(s *Server) <-chan struct{} {
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	return closed
}

// waitClosed fails the test unless closed is closed within d.
func waitClosed(t *testing.T, closed <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-closed:
	case <-time.After(d):
		t.Fatalf("Close did not return within %v %s", d, what)
	}
}

// TestFinalModelOutlastsClose: a client whose last update was answered
// asks for the next model after the job ended; the server, already
// closing, still hands it the final model, and closes as soon as every
// contributor has it.
func TestFinalModelOutlastsClose(t *testing.T) {
	s := startServer(t, ServerOptions{FinalLinger: time.Minute})
	ctx := testCtx(t)
	final := &fdxv1.GlobalModel{Job: testJob, Round: 3, Final: true, Contributors: []string{"a", "b"}}
	if err := s.Publish(ctx, final); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	closed := closeAsync(s)
	select {
	case <-s.lingering:
	case <-ctx.Done():
		t.Fatal("Close did not wait for the contributors of the final model")
	}
	for _, id := range []string{"a", "b"} {
		select {
		case <-closed:
			t.Fatalf("Close returned before client %s fetched the final model", id)
		default:
		}
		c := dialClient(t, ClientOptions{Addr: s.Addr(), Job: testJob, ClientID: id})
		m, err := c.Model(ctx, 3)
		if err != nil || !m.GetFinal() || m.GetRound() != 3 {
			t.Fatalf("client %s: Model(3) = %v, %v; want the final model of round 3", id, m, err)
		}
	}
	waitClosed(t, closed, 10*time.Second, "after every contributor fetched the final model")
}

// TestFinalLingerBounded: contributors that never come back hold Close
// up for FinalLinger only; afterwards the server refuses calls.
func TestFinalLingerBounded(t *testing.T) {
	s := startServer(t, ServerOptions{FinalLinger: 50 * time.Millisecond})
	ctx := testCtx(t)
	if err := s.Publish(ctx, &fdxv1.GlobalModel{Job: testJob, Round: 2, Final: true, Contributors: []string{"gone"}}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	c := dialClient(t, ClientOptions{Addr: s.Addr(), Job: testJob, ClientID: "gone"})
	waitClosed(t, closeAsync(s), 10*time.Second, "with a FinalLinger of 50ms")
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := c.Model(cctx, 2); err == nil {
		t.Error("Model after Close succeeded; want an error")
	}
}

// TestNoLingerWithoutFinalModel: a server stopped mid-job (a signal, an
// error) closes at once, whatever FinalLinger says, and waiting callers
// are told it is going away.
func TestNoLingerWithoutFinalModel(t *testing.T) {
	s := startServer(t, ServerOptions{FinalLinger: time.Hour})
	ctx := testCtx(t)
	if err := s.Publish(ctx, &fdxv1.GlobalModel{Job: testJob, Round: 1, Contributors: []string{"a"}}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	c := dialClient(t, ClientOptions{Addr: s.Addr(), Job: testJob, ClientID: "a"})
	errc := make(chan error, 1)
	go func() {
		_, err := c.Model(ctx, 2)
		errc <- err
	}()
	waitClosed(t, closeAsync(s), 10*time.Second, "for a job that has not ended")
	select {
	case <-s.lingering:
		t.Error("Close lingered although the model is not final")
	default:
	}
	if err := <-errc; status.Code(err) != codes.Unavailable {
		t.Errorf("waiting Model call ended with %v; want Unavailable", err)
	}
}
