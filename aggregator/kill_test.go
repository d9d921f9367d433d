package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
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

	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/function"
	"github.com/fdxkafka/fdxkafka/internal/kafkatest"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
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
}

func (k killJob) args() []string {
	return []string{
		"--broker", k.brokers, "--job", k.job,
		"--minclients", strconv.Itoa(k.clients), "--numrounds", strconv.Itoa(k.rounds),
		"--dataset", "synthetic", "--max-examples", "60", "--eval-examples", "200",
		"--strategy", "fedavgm", "--seed", "11", "--update-partitions", "3",
		"--out", k.out, "--log-level", "info",
	}
}

// startClients runs long-running participants until the job's final model.
func startClients(ctx context.Context, t *testing.T, brokers, jobID string, n int) func() {
	t.Helper()
	srv := function.NewServer(function.Config{Data: dataset.NewCatalog()})
	log := slog.New(slog.DiscardHandler)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		req, err := function.ParseRequest(function.RequestJSON(brokers, strconv.Itoa(i), "kafka", jobID, 60), function.Defaults{})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := function.Follow(ctx, srv, req, log); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		}()
	}
	return func() {
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
}

// aggregatorRun is one process of the aggregator.
type aggregatorRun struct {
	cmd    *exec.Cmd
	ready  chan struct{} // closed when it logged that rounds are running
	exited chan error
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
	r := &aggregatorRun{cmd: cmd, ready: make(chan struct{}), exited: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			if strings.Contains(line, `msg="job started"`) || strings.Contains(line, `msg="resumed from checkpoint"`) {
				once.Do(func() { close(r.ready) })
			}
			if testing.Verbose() && (strings.Contains(line, "fault injection") || strings.Contains(line, "level=ERROR")) {
				t.Log(line)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	go func() { r.exited <- cmd.Wait(); pw.Close() }()
	return r
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
	bin, err := buildAggregator()
	if err != nil {
		t.Fatal(err)
	}
	brokers := kafkatest.Brokers(t)
	const clients, rounds, minKills = 3, 60, 24
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	dir := t.TempDir()

	// The reference: the same job, never interrupted.
	ref := killJob{brokers: brokers, job: kafkatest.Job(t) + "-ref", out: filepath.Join(dir, "ref.json"), clients: clients, rounds: rounds}
	wait := startClients(ctx, t, brokers, ref.job, clients)
	r := startAggregator(t, bin, ref)
	if err := <-r.exited; err != nil {
		t.Fatalf("reference run: %v", err)
	}
	wait()
	want := readOut(t, ref.out).Final.SHA256

	k := killJob{brokers: brokers, job: kafkatest.Job(t) + "-kill", out: filepath.Join(dir, "kill.json"), clients: clients, rounds: rounds}
	wait = startClients(ctx, t, brokers, k.job, clients)
	rng := rand.New(rand.NewPCG(2026, 11))
	kills, midTxn := 0, 0
	for done := false; !done; {
		var env []string
		inject := kills < minKills && kills%4 == 3
		if inject {
			env = append(env, envFaultBeforeCommit+"=any")
		}
		r := startAggregator(t, bin, k, env...)
		if kills >= minKills {
			if err := <-r.exited; err != nil {
				t.Fatalf("final run after %d kills: %v", kills, err)
			}
			break
		}
		select {
		case <-r.ready:
		case err := <-r.exited:
			t.Fatalf("aggregator exited before running rounds (kill %d): %v", kills, err)
		case <-ctx.Done():
			t.Fatal("timeout waiting for the aggregator to start")
		}
		if inject {
			err := <-r.exited
			if ws, ok := r.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				if err == nil {
					t.Fatalf("job finished after %d kills, before %d; raise the rounds", kills, minKills)
				}
				t.Fatalf("fault injection: aggregator ended with %v, want SIGKILL", err)
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
			t.Fatalf("aggregator failed: %v", err)
		case <-time.After(time.Duration(rng.IntN(150)) * time.Millisecond):
			r.cmd.Process.Signal(syscall.SIGKILL)
			<-r.exited
			kills++
		}
	}
	wait()
	got := readOut(t, k.out)
	t.Logf("survived %d SIGKILLs (%d inside a round transaction before commit); final model round %d sha256 %s", kills, midTxn, got.Final.Round, got.Final.SHA256)
	if got.Final.SHA256 != want {
		t.Errorf("final model after kills %s differs from the uninterrupted run's %s", got.Final.SHA256, want)
	}

	hist, err := kafkachan.History(ctx, kafkachan.Options{Brokers: brokers, Job: k.job})
	if err != nil {
		t.Fatalf("read history: %v", err)
	}
	wantIDs := make([]string, clients)
	for i := range wantIDs {
		wantIDs[i] = strconv.Itoa(i)
	}
	slices.Sort(wantIDs)
	if len(hist) != rounds+1 {
		t.Errorf("history has %d committed models, want %d (one per round plus the initial)", len(hist), rounds+1)
	}
	for i, m := range hist {
		if m.GetRound() != int64(i+1) {
			t.Fatalf("committed model %d has round %d, want %d: a round was committed twice or skipped", i, m.GetRound(), i+1)
		}
		if i == 0 {
			continue
		}
		if !slices.Equal(m.GetContributors(), wantIDs) {
			t.Errorf("round %d contributors %v, want %v", m.GetRound()-1, m.GetContributors(), wantIDs)
		}
	}
}
