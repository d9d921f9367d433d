package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/evaluations/netbench/nbresult"
	"github.com/fdxkafka/fdxkafka/evaluations/netbench/testbed"
	"github.com/fdxkafka/fdxkafka/shared/channel"
)

// The channels, modes and records netbench.json holds live in nbresult,
// which evaluations/report reads too.
const (
	chGRPC    = nbresult.GRPC
	chKafka1  = nbresult.Kafka1
	chKafka3  = nbresult.Kafka3
	modeLong  = nbresult.ModeLong
	modeRound = nbresult.ModeRound
)

type (
	// cell is one measurement: a model, N clients, a link rate, a channel.
	cell = nbresult.Cell
	// Result is one run of a cell.
	Result = nbresult.Result
)

var modelBytes = nbresult.ModelBytes

// aggResult is the part of the aggregator's --out file a cell reads.
type aggResult struct {
	Rounds []struct {
		Round         int64   `json:"round"`
		DurationMs    float64 `json:"duration_ms"`
		PropagationMs float64 `json:"propagation_ms"`
	} `json:"rounds"`
	Stats channel.Stats `json:"aggregator_traffic"`
}

// proc is one process a cell started.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  string // its stdout+stderr file
	done chan error
}

func (b *bed) start(ctx context.Context, name, host string, env []string, bin string, args ...string) (*proc, error) {
	cmd, err := b.tb.Command(ctx, host, bin, args...)
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(b.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, out: logPath, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); f.Close() }()
	return p, nil
}

// wait waits for p until d passes.
func (p *proc) wait(d time.Duration) error {
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			return fmt.Errorf("%s: %w; last lines:\n%s", p.name, err, tailFile(p.out, 15))
		}
		return nil
	case <-time.After(d):
		return fmt.Errorf("%s did not finish within %v; last lines:\n%s", p.name, d, tailFile(p.out, 15))
	}
}

// stop ends p (SIGTERM, then SIGKILL) and waits for it.
func (p *proc) stop() {
	select {
	case err := <-p.done:
		p.done <- err
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		p.done <- <-p.done
	}
}

func (p *proc) cpu() float64 {
	if p.cmd.ProcessState == nil {
		return 0
	}
	return (p.cmd.ProcessState.UserTime() + p.cmd.ProcessState.SystemTime()).Seconds()
}

// cellOptions are a run's settings every cell shares.
type cellOptions struct {
	Rounds      int
	Timeout     time.Duration
	MaxInFlight int
}

// runCell runs one cell on the bed (whose links and brokers are set) and
// measures it.
func (b *bed) runCell(ctx context.Context, c cell, repeat int, o cellOptions) (res *Result, err error) {
	s, err := modelBytes(c.Model)
	if err != nil {
		return nil, err
	}
	res = &Result{Cell: c, Repeat: repeat, Rounds: o.Rounds, Brokers: c.Brokers(), ModelBytes: s,
		StartedAt: time.Now().UTC().Format(time.RFC3339)}
	res.Job = fmt.Sprintf("nb-%s-%d-%s-%s-%d", strings.ReplaceAll(c.Model, ":", ""), c.Clients, c.Channel, c.Mode, time.Now().UnixNano()%1e10)
	cellDir := filepath.Join(b.dir, res.Job)
	if err := os.MkdirAll(cellDir, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(cellDir)
	var procs []*proc
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()

	aggAddr := net.JoinHostPort(b.addr(aggHost), strconv.Itoa(grpcPort))
	args := []string{"--job", res.Job, "--model", c.Model, "--dataset", "synthetic", "--max-examples", "20",
		"--eval-examples", "200", "--minclients", strconv.Itoa(c.Clients), "--partitions", strconv.Itoa(c.Clients),
		"--numrounds", strconv.Itoa(o.Rounds), "--seed", "1", "--metrics-addr", "127.0.0.1:" + strconv.Itoa(metricsPort),
		"--out", filepath.Join(cellDir, "agg.json"), "--log-level", "warn", "--log-to", "text"}
	broker := aggAddr
	if c.Channel == chGRPC {
		args = append(args, "--grpc", "--broker", aggAddr)
	} else {
		broker = b.brokerList()
		res.Partitions = 1
		if c.Channel == chKafka3 {
			res.Partitions = 3
		}
		args = append(args, "--broker", broker, "--model-partitions", strconv.Itoa(res.Partitions))
	}
	wire := participant.ChannelKafka
	if c.Channel == chGRPC {
		wire = participant.ChannelGRPC
	}

	before, err := b.tb.Counters(ctx)
	if err != nil {
		return nil, err
	}
	stat0, err := readProcStat()
	if err != nil {
		return nil, err
	}
	broker0 := map[string]float64{}
	for h, pid := range b.brokerPids {
		broker0[h] = pidCPU(pid)
	}
	start := time.Now()

	agg, err := b.start(ctx, res.Job+"-aggregator", aggHost, nil, b.bins.aggregator, args...)
	if err != nil {
		return nil, err
	}
	procs = append(procs, agg)

	// Clients spread over the client hosts (or, with none, the
	// aggregator's).
	hosts := b.clientHosts
	if len(hosts) == 0 {
		hosts = []string{aggHost}
	}
	type share struct {
		host     string
		first, n int
	}
	var shares []share
	for i, h := range hosts {
		lo, hi := c.Clients*i/len(hosts), c.Clients*(i+1)/len(hosts)
		if hi > lo {
			shares = append(shares, share{h, lo, hi - lo})
		}
	}
	var reports []string
	var waiters []*proc
	switch c.Mode {
	case modeLong:
		for _, sh := range shares {
			out := filepath.Join(cellDir, "clients-"+sh.host+".json")
			p, err := b.start(ctx, res.Job+"-clients-"+sh.host, sh.host, nil, b.bins.netbench, "clients",
				"-channel", wire, "-broker", broker, "-job", res.Job, "-first", strconv.Itoa(sh.first),
				"-n", strconv.Itoa(sh.n), "-rounds", strconv.Itoa(o.Rounds), "-out", out, "-host", sh.host)
			if err != nil {
				return res, err
			}
			procs, waiters, reports = append(procs, p), append(waiters, p), append(reports, out)
		}
	case modeRound:
		var groups []string
		for _, sh := range shares {
			addr := b.addr(sh.host)
			if sh.host == aggHost {
				addr = "127.0.0.1"
			}
			p, err := b.start(ctx, res.Job+"-function-"+sh.host, sh.host,
				[]string{"PORT=" + strconv.Itoa(functionPort), "HOST=" + addr}, b.bins.function)
			if err != nil {
				return res, err
			}
			procs = append(procs, p)
			groups = append(groups, fmt.Sprintf("http://%s/=%d-%d", net.JoinHostPort(addr, strconv.Itoa(functionPort)), sh.first, sh.first+sh.n-1))
		}
		out := filepath.Join(cellDir, "trigger.json")
		p, err := b.start(ctx, res.Job+"-trigger", aggHost, nil, b.bins.netbench, "trigger",
			"-metrics", "http://127.0.0.1:"+strconv.Itoa(metricsPort)+"/metrics", "-functions", strings.Join(groups, ","),
			"-channel", wire, "-broker", broker, "-job", res.Job, "-rounds", strconv.Itoa(o.Rounds),
			"-max-inflight", strconv.Itoa(o.MaxInFlight), "-timeout", o.Timeout.String(), "-out", out)
		if err != nil {
			return res, err
		}
		procs, waiters, reports = append(procs, p), append(waiters, p), append(reports, out)
	default:
		return nil, fmt.Errorf("mode %q: want %s or %s", c.Mode, modeLong, modeRound)
	}

	if err := agg.wait(o.Timeout); err != nil {
		return res, err
	}
	for _, w := range waiters {
		if err := w.wait(2 * time.Minute); err != nil {
			return res, err
		}
	}
	wall := time.Since(start)
	broker1 := map[string]float64{}
	for h, pid := range b.brokerPids {
		broker1[h] = pidCPU(pid)
	}
	stat1, err := readProcStat()
	if err != nil {
		return nil, err
	}
	after, err := b.tb.Counters(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range procs {
		p.stop()
	}

	// The aggregator's account of the job.
	raw, err := os.ReadFile(filepath.Join(cellDir, "agg.json"))
	if err != nil {
		return res, fmt.Errorf("aggregator result: %w", err)
	}
	var out aggResult
	if err := json.Unmarshal(raw, &out); err != nil {
		return res, fmt.Errorf("aggregator result: %w", err)
	}
	if len(out.Rounds) == 0 {
		return res, errors.New("aggregator result: no rounds")
	}
	res.Aggregator = out.Stats
	res.CPU = nbresult.CPUFigures{WallSec: wall.Seconds(), Processes: map[string]float64{"aggregator": agg.cpu()}, MaxRSSMB: map[string]float64{}}
	for _, rp := range reports {
		var cr clientsReport
		raw, err := os.ReadFile(rp)
		if err != nil {
			return res, fmt.Errorf("client report: %w", err)
		}
		if err := json.Unmarshal(raw, &cr); err != nil {
			return res, fmt.Errorf("client report %s: %w", rp, err)
		}
		for _, s := range cr.Summaries {
			res.Clients = res.Clients.Add(channel.Stats{MessagesSent: s.MessagesSent, MessagesReceived: s.MessagesReceived,
				BytesSent: s.BytesSent, BytesReceived: s.BytesReceived})
		}
		name := strings.TrimSuffix(filepath.Base(rp), ".json")
		res.CPU.Processes[name] = cr.CPUSec
		res.CPU.MaxRSSMB[name] = cr.MaxRSSMB
	}
	for _, p := range procs {
		if strings.Contains(p.name, "-function-") {
			res.CPU.Processes[strings.TrimPrefix(p.name, res.Job+"-")] = p.cpu()
		}
	}
	for h := range broker1 {
		res.CPU.Processes["broker-"+h] = broker1[h] - broker0[h]
	}
	ours := 0.0
	for _, v := range res.CPU.Processes {
		ours += v
	}
	res.CPU.MachineBusy, res.CPU.SoftIRQ = stat1.busySince(stat0)
	if total := stat1.totalSec() - stat0.totalSec(); total > 0 {
		res.CPU.OursShare = ours / total
	}

	res.Messages = res.Clients.MessagesSent + res.Clients.MessagesReceived
	if c.Channel != chGRPC {
		res.Messages += res.Aggregator.MessagesSent + res.Aggregator.MessagesReceived
	}
	var sumRound, sumProp float64
	n := 0
	for _, r := range out.Rounds {
		res.PerRound = append(res.PerRound, nbresult.RoundFig{Round: r.Round, DurationMs: r.DurationMs, PropagationMs: r.PropagationMs})
		if r.Round == 1 {
			res.FirstPropagationMs = r.PropagationMs
		}
		if r.Round >= 2 || len(out.Rounds) == 1 {
			sumRound += r.DurationMs
			sumProp += r.PropagationMs
			res.PropagationMaxMs = max(res.PropagationMaxMs, r.PropagationMs)
			n++
		}
	}
	if n > 0 {
		res.RoundMs, res.PropagationMs = sumRound/float64(n), sumProp/float64(n)
	}

	res.Links = map[string]testbed.LinkCounters{}
	for h, a := range after {
		res.Links[h] = a.Sub(before[h])
	}
	res.AggEgressBytes = res.Links[aggHost].Egress.Bytes
	res.AggIngressBytes = res.Links[aggHost].Ingress.Bytes
	res.ModelsSent = o.Rounds
	if c.Channel != chGRPC {
		res.ModelsSent = o.Rounds + 1
	}
	res.AggEgressPerModel = float64(res.AggEgressBytes) / float64(int64(res.ModelsSent)*s)
	for i := 1; i <= c.Brokers(); i++ {
		h := brokerHost(i)
		if eg := res.Links[h].Egress.Bytes; eg > res.BusiestBrokerOut {
			res.BusiestBroker, res.BusiestBrokerOut = h, eg
		}
	}
	k := max(c.Brokers(), 1)
	res.BoundMs = float64(int64(c.Clients)*s*8) / float64(int64(k)*c.LinkBps) * 1000
	if res.PropagationMs > 0 {
		res.Efficiency = res.BoundMs / res.PropagationMs
	}
	return res, nil
}
