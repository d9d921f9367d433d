package command

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
)

// Fault-injection switches, environment variables the crash tests of the
// aggregator binary set. FDX_FAULT_KILL_BEFORE_COMMIT,
// "any" or a round number, makes the process SIGKILL itself inside that
// round's Kafka transaction, after the model and offsets are sent and
// before the commit. FDX_FAULT_KILL_AFTER_STORE, a client id or "any", makes
// it SIGKILL itself once that client's gRPC update is in the update log,
// before it is folded and answered.
// FDX_FAULT_STALL_BEFORE_COMMIT, a round number, makes that round's
// transaction hang where a Kafka client hangs when a broker dies, so that a
// test sees the watchdog end the process (exit code 75) and the restart
// finish the job.
// FDX_FAULT_STALL_SHUTDOWN=1 makes a signalled aggregator hang once its job
// has stopped, as a slow shutdown would, so that a test can send the second
// signal while the first is still being handled.
const (
	EnvFaultBeforeCommit  = "FDX_FAULT_KILL_BEFORE_COMMIT"
	EnvFaultAfterStore    = "FDX_FAULT_KILL_AFTER_STORE"
	EnvFaultStallShutdown = "FDX_FAULT_STALL_SHUTDOWN"
	EnvFaultStallCommit   = "FDX_FAULT_STALL_BEFORE_COMMIT"
)

func (c *config) faults() error {
	if v := os.Getenv(EnvFaultBeforeCommit); v != "" {
		want := int64(-1)
		if v != "any" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return fmt.Errorf("%s: want \"any\" or a round number, got %q", EnvFaultBeforeCommit, v)
			}
			want = n
		}
		c.channel.BeforeCommit = func(round int64) {
			if want < 0 || round == want {
				kill(fmt.Sprintf("before committing round %d", round))
			}
		}
	}
	if v := os.Getenv(EnvFaultStallCommit); v != "" {
		want, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fmt.Errorf("%s: want a round number, got %q", EnvFaultStallCommit, v)
		}
		kill := c.channel.BeforeCommit
		c.channel.BeforeCommit = func(round int64) {
			if round == want {
				fmt.Fprintf(os.Stderr, "aggregator: fault injection: stalling the transaction of round %d\n", round)
				select {} // as a hung Kafka call would
			}
			if kill != nil {
				kill(round)
			}
		}
	}
	if v := os.Getenv(EnvFaultAfterStore); v != "" {
		c.channel.AfterStore = func(u *fdxv1.Update) {
			if v == "any" || u.GetClientId() == v {
				kill(fmt.Sprintf("after storing the update of %q for round %d", u.GetClientId(), u.GetBaseRound()))
			}
		}
	}
	return nil
}

func kill(where string) {
	fmt.Fprintf(os.Stderr, "aggregator: fault injection: SIGKILL %s\n", where)
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}
