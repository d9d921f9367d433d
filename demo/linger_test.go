package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

// TestGRPCNoLinger: over gRPC with --final-linger 0 the aggregator stops
// serving the moment the final model is published, so a client may never
// see it. The demo must still end once its job has: it stops clients that
// are left waiting, rather than wait for their own timeout.
func TestGRPCNoLinger(t *testing.T) {
	for i := range 3 {
		ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
		var out strings.Builder
		err := run(ctx, []string{"--grpc", "--broker", "127.0.0.1:0", "--final-linger", "0", "--clients", "3", "--minclients", "3", "--numrounds", "1",
			"--dataset", "synthetic", "--max-examples", "50", "--eval-examples", "100", "--log-level", "error"}, &out, io.Discard)
		expired := ctx.Err()
		cancel()
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		if expired != nil {
			t.Fatalf("run %d ended only when its deadline passed: the demo waited for clients that missed the final model", i)
		}
		if s := out.String(); !strings.Contains(s, `over grpc: 1 rounds`) {
			t.Errorf("run %d summary:\n%s", i, s)
		}
	}
}
