package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fdxkafka/fdxkafka/aggregator/command"
	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/internal/cli"
	"github.com/fdxkafka/fdxkafka/internal/fedtest"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
)

// buildAggregator compiles this command once per test binary.
var buildAggregator = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "fdx-aggregator-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "aggregator")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// killJob is a small, fast job: the test is about crash safety, not
// accuracy.
type killJob struct {
	brokers, job, out string
	clients, rounds   int
	// stateFile, when set, runs the gRPC channel listening on brokers.
	stateFile string
	// extra are more flags.
	extra []string
}

func (k killJob) channel() string {
	if k.stateFile != "" {
		return "grpc"
	}
	return "kafka"
}

func (k killJob) args() []string {
	var extra []string
	if k.stateFile != "" {
		extra = []string{"--grpc", "--state-file", k.stateFile}
	}
	return append(append(extra, []string{
		"--broker", k.brokers, "--job", k.job,
		"--minclients", strconv.Itoa(k.clients), "--numrounds", strconv.Itoa(k.rounds),
		"--dataset", "synthetic", "--max-examples", "60", "--eval-examples", "200",
		"--strategy", "fedavgm", "--seed", "11", "--update-partitions", "3",
		"--out", k.out, "--log-level", "info", "--log-to", "text",
	}...), k.extra...)
}

// startClients runs long-running participants until the job's final model.
func startClients(ctx context.Context, t *testing.T, k killJob) func() {
	t.Helper()
	return fedtest.Clients(ctx, t, participant.Target{Channel: k.channel(), Broker: k.brokers, Job: k.job}, k.clients, fedtest.Options{})
}

// aggregatorRun is one process of the aggregator.
type aggregatorRun struct {
	bin     string
	k       killJob
	cmd     *exec.Cmd
	ready   chan struct{} // closed when it logged that rounds are running
	stalled chan struct{} // closed when it stalled its shutdown (fault switch)
	exited  chan error
	tail    *lineTail
}

// tailLines is how much of an aggregator's stderr a failing test prints.
const tailLines = 200

// lineTail keeps the last lines written to it.
type lineTail struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineTail) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == tailLines {
		l.lines = l.lines[1:]
	}
	l.lines = append(l.lines, line)
}

func (l *lineTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func startAggregator(t *testing.T, bin string, k killJob, env ...string) *aggregatorRun {
	t.Helper()
	cmd := exec.Command(bin, k.args()...)
	cmd.Env = append(os.Environ(), env...)
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatalf("start aggregator: %v", err)
	}
	r := &aggregatorRun{bin: bin, k: k, cmd: cmd, ready: make(chan struct{}), stalled: make(chan struct{}), exited: make(chan error, 1), tail: &lineTail{}}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		once, stallOnce := sync.Once{}, sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			r.tail.add(line)
			if strings.Contains(line, "stalling shutdown") {
				stallOnce.Do(func() { close(r.stalled) })
			}
			if strings.Contains(line, `msg="job started"`) || strings.Contains(line, `msg="resumed from checkpoint"`) {
				once.Do(func() { close(r.ready) })
			}
			if os.Getenv("FDX_TEST_AGG_LOG") != "" || (testing.Verbose() && (strings.Contains(line, "fault injection") || strings.Contains(line, "level=ERROR"))) {
				t.Log(line)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		<-scanned // the tail holds the last line before anyone reads it
		r.exited <- err
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	})
	return r
}

// wait waits up to d for the process to exit and returns how it exited. A
// process still running at the deadline is sent SIGQUIT, so that its
// goroutine dump lands in its stderr, and the test fails with its last
// lines.
func (r *aggregatorRun) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case err := <-r.exited:
		r.exited <- err // later reads see it too
		return err
	case <-time.After(d):
	}
	r.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
	}
	r.fatalf(t, "aggregator still running after %v; sent SIGQUIT", d)
	return nil
}

// fatalf fails the test with the process's last lines of stderr.
func (r *aggregatorRun) fatalf(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Fatalf("%s\n--- last %d lines of the aggregator's stderr ---\n%s", fmt.Sprintf(format, args...), tailLines, r.tail)
}

// finish waits up to d for the job to end, restarting the aggregator (as
// systemd's Restart=on-failure would) whenever it exits with
// cli.ExitOutcomeUnknown, and fails the test on any other failure. It
// returns the last run and how many restarts it took.
func (r *aggregatorRun) finish(t *testing.T, d time.Duration) (*aggregatorRun, int) {
	t.Helper()
	deadline := time.Now().Add(d)
	restarts := 0
	for {
		err := r.wait(t, time.Until(deadline))
		if err == nil {
			return r, restarts
		}
		if r.cmd.ProcessState.ExitCode() != cli.ExitOutcomeUnknown {
			r.fatalf(t, "aggregator: %v", err)
		}
		restarts++
		t.Logf("aggregator exited with code %d (transaction outcome unknown); restarting it", cli.ExitOutcomeUnknown)
		r = startAggregator(t, r.bin, r.k)
	}
}

func readOut(t *testing.T, path string) *job.Output {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read result: %v", err)
	}
	var out struct {
		Final struct {
			SHA256 string `json:"sha256"`
			Round  int64  `json:"round"`
		} `json:"final_model"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("decode result: %v", err)
	}
	return &job.Output{Final: &job.FinalModel{SHA256: out.Final.SHA256, Round: out.Final.Round}}
}

// TestKillAndResume SIGKILLs the aggregator at seeded random instants (and,
// through the fault-injection switch, inside round transactions between
// sending the model and committing), restarts it each time, and checks
// that the job's final model is bit-identical to an uninterrupted run and
// that the committed history has every round exactly once with exactly the
// expected contributors.
func TestKillAndResume(t *testing.T) {
	brokers := kafkatest.Brokers(t)
	dir := t.TempDir()
	hist := killAndResume(t, killJob{brokers: brokers, job: kafkatest.Job(t), out: filepath.Join(dir, "out.json")})
	if err := checkHistory(hist, killClients, killRounds); err != nil {
		t.Error(err)
	}
}

// TestKillAndResumeGRPC does the same over the gRPC channel, whose durable
// state is the --state-file (newest model), its update log and its round
// history, from which every round must show up once with all its clients.
func TestKillAndResumeGRPC(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	hist := killAndResume(t, killJob{brokers: addr, job: kafkatest.Job(t), out: filepath.Join(dir, "out.json"), stateFile: filepath.Join(dir, "state.pb")})
	if err := checkHistory(hist, killClients, killRounds); err != nil {
		t.Error(err)
	}
}

const killClients, killRounds, minKills = 3, 200, 24

// killAndResume runs k once without interruption and once with kills, and
// returns the interrupted job's committed model history (Kafka only).
func killAndResume(t *testing.T, k killJob) []*fdxv1.GlobalModel {
	t.Helper()
	bin, err := buildAggregator()
	if err != nil {
		t.Fatal(err)
	}
	k.clients, k.rounds = killClients, killRounds
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()

	// The reference: the same job, never interrupted.
	ref := k
	ref.job, ref.out = k.job+"-ref", k.out+".ref"
	if k.stateFile != "" {
		ref.stateFile = k.stateFile + ".ref"
	}
	wait := startClients(ctx, t, ref)
	startAggregator(t, bin, ref).finish(t, 6*time.Minute)
	wait()
	want := readOut(t, ref.out).Final.SHA256

	wait = startClients(ctx, t, k)
	rng := rand.New(rand.NewPCG(2026, 11))
	kills, midTxn := 0, 0
	for done := false; !done; {
		var env []string
		// Every fourth kill is injected where a crash does most harm: on
		// Kafka inside a round transaction, between sending the model and
		// offsets and committing; on gRPC between storing an update in the
		// log and folding and answering it.
		inject := kills < minKills && kills%4 == 3
		if inject && k.stateFile == "" {
			env = append(env, command.EnvFaultBeforeCommit+"=any")
		} else if inject {
			env = append(env, command.EnvFaultAfterStore+"=any")
		}
		r := startAggregator(t, bin, k, env...)
		if kills >= minKills {
			r.finish(t, 6*time.Minute)
			break
		}
		select {
		case <-r.ready:
		case err := <-r.exited:
			r.fatalf(t, "aggregator exited before running rounds (kill %d): %v", kills, err)
		case <-ctx.Done():
			r.wait(t, 0)
		}
		if inject {
			err := r.wait(t, 2*time.Minute)
			if ws, ok := r.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				if err == nil {
					t.Fatalf("job finished after %d kills, before %d; raise the rounds", kills, minKills)
				}
				r.fatalf(t, "fault injection: aggregator ended with %v, want SIGKILL", err)
			}
			kills++
			midTxn++
			continue
		}
		select {
		case err := <-r.exited:
			if err == nil {
				t.Fatalf("job finished after %d kills, before %d; raise the rounds", kills, minKills)
			}
			r.fatalf(t, "aggregator failed: %v", err)
		case <-time.After(time.Duration(rng.IntN(100)) * time.Millisecond):
			r.cmd.Process.Signal(syscall.SIGKILL)
			r.wait(t, time.Minute)
			kills++
		}
	}
	wait()
	got := readOut(t, k.out)
	t.Logf("%s: survived %d SIGKILLs (%d injected mid-commit or mid-accept); final model round %d sha256 %s", k.channel(), kills, midTxn, got.Final.Round, got.Final.SHA256)
	if got.Final.SHA256 != want {
		t.Errorf("final model after kills %s differs from the uninterrupted run's %s", got.Final.SHA256, want)
	}
	if got.Final.Round != int64(k.rounds+1) {
		t.Errorf("final model round %d, want %d", got.Final.Round, k.rounds+1)
	}
	if k.stateFile != "" {
		hist, err := grpcchan.ReadHistory(k.stateFile)
		if err != nil {
			t.Fatalf("read history: %v", err)
		}
		return hist
	}
	hist, err := kafkachan.History(ctx, kafkachan.Options{Brokers: k.brokers, Job: k.job})
	if err != nil {
		t.Fatalf("read history: %v", err)
	}
	return hist
}

// checkHistory checks that every round was committed exactly once, in
// order, with exactly the expected contributors.
func checkHistory(hist []*fdxv1.GlobalModel, clients, rounds int) error {
	wantIDs := make([]string, clients)
	for i := range wantIDs {
		wantIDs[i] = strconv.Itoa(i)
	}
	slices.Sort(wantIDs)
	var errs []error
	if len(hist) != rounds+1 {
		errs = append(errs, fmt.Errorf("history has %d committed models, want %d (one per round plus the initial)", len(hist), rounds+1))
	}
	for i, m := range hist {
		if m.GetRound() != int64(i+1) {
			return errors.Join(append(errs, fmt.Errorf("committed model %d has round %d, want %d: a round was committed twice or skipped", i, m.GetRound(), i+1))...)
		}
		if i > 0 && !slices.Equal(m.GetContributors(), wantIDs) {
			errs = append(errs, fmt.Errorf("round %d contributors %v, want %v", m.GetRound()-1, m.GetContributors(), wantIDs))
		}
	}
	return errors.Join(errs...)
}

// TestSIGTERM checks a clean stop: the first SIGTERM lets the open round's
// work end and the process exit 0; a restart resumes the job.
func TestSIGTERM(t *testing.T) {
	bin, err := buildAggregator()
	if err != nil {
		t.Fatal(err)
	}
	brokers := kafkatest.Brokers(t)
	dir := t.TempDir()
	k := killJob{brokers: brokers, job: kafkatest.Job(t), out: filepath.Join(dir, "out.json"), clients: 2, rounds: 3}
	// No clients yet: the aggregator waits in round 1 when it is stopped.
	r := startAggregator(t, bin, k)
	select {
	case <-r.ready:
	case err := <-r.exited:
		t.Fatalf("aggregator exited early: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("aggregator did not start")
	}
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.exited:
		if err != nil {
			t.Fatalf("after SIGTERM: %v, want exit status 0", err)
		}
	case <-time.After(time.Minute):
		r.wait(t, 0) // fails the test with a goroutine dump
	}

	// A second signal while the first is being handled ends the process
	// at once with 143; the fault switch holds the shutdown open so that
	// the second signal always lands inside it.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r = startAggregator(t, bin, k, command.EnvFaultStallShutdown+"=1")
	select {
	case <-r.ready:
	case <-time.After(2 * time.Minute):
		r.wait(t, 0)
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.stalled:
	case err := <-r.exited:
		t.Fatalf("aggregator exited (%v) before it stalled its shutdown", err)
	case <-time.After(time.Minute):
		t.Fatal("aggregator did not reach its shutdown after SIGTERM")
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
		if code := r.cmd.ProcessState.ExitCode(); code != 143 {
			t.Errorf("after the second SIGTERM: exit code %d, want 143", code)
		}
	case <-time.After(time.Minute):
		r.wait(t, 0)
	}
	wait := startClients(ctx, t, k)
	startAggregator(t, bin, k).finish(t, 2*time.Minute)
	wait()
	if got := readOut(t, k.out).Final.Round; got != int64(k.rounds+1) {
		t.Errorf("final round %d, want %d", got, k.rounds+1)
	}
}

// TestStalledTransactionExits makes a round transaction hang where a Kafka
// client hangs when a broker dies: the watchdog must end the process with
// cli.ExitOutcomeUnknown, and the restart must finish the job with every
// round committed exactly once.
func TestStalledTransactionExits(t *testing.T) {
	bin, err := buildAggregator()
	if err != nil {
		t.Fatal(err)
	}
	brokers := kafkatest.Brokers(t)
	dir := t.TempDir()
	const clients, rounds = 3, 6
	k := killJob{brokers: brokers, job: kafkatest.Job(t), out: filepath.Join(dir, "out.json"), clients: clients, rounds: rounds,
		extra: []string{"--transaction-timeout", "2s"}}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	wait := startClients(ctx, t, k)
	r := startAggregator(t, bin, k, command.EnvFaultStallCommit+"=3")
	start := time.Now()
	err = r.wait(t, 2*time.Minute)
	if code := r.cmd.ProcessState.ExitCode(); code != cli.ExitOutcomeUnknown {
		r.fatalf(t, "stalled aggregator: %v (exit code %d), want exit code %d", err, code, cli.ExitOutcomeUnknown)
	}
	if !strings.Contains(r.tail.String(), "stalled past its deadline") {
		r.fatalf(t, "the stalled aggregator exited %d without saying why", cli.ExitOutcomeUnknown)
	}
	t.Logf("watchdog ended the stalled aggregator after %v", time.Since(start).Round(time.Millisecond))
	r = startAggregator(t, bin, k)
	r.finish(t, 3*time.Minute)
	wait()
	if got := readOut(t, k.out).Final.Round; got != rounds+1 {
		t.Errorf("final round %d, want %d", got, rounds+1)
	}
	hist, err := kafkachan.History(ctx, kafkachan.Options{Brokers: brokers, Job: k.job})
	if err != nil {
		t.Fatalf("read history: %v", err)
	}
	if err := checkHistory(hist, clients, rounds); err != nil {
		t.Error(err)
	}
}
