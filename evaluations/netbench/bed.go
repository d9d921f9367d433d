package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/fdxkafka/fdxkafka/evaluations/netbench/testbed"
	"github.com/fdxkafka/fdxkafka/shared/embedded"
	"github.com/twmb/franz-go/pkg/kfake"
)

// Host names of the testbed: the aggregator, brokers b1..bK, client hosts
// c1..cC.
const aggHost = "agg"

func brokerHost(i int) string { return "b" + strconv.Itoa(i) }
func clientHost(i int) string { return "c" + strconv.Itoa(i) }

// Ports inside the hosts' namespaces.
const (
	grpcPort     = 8080
	metricsPort  = 9100
	functionPort = 8080
	kafkaPort    = 25092 // node i of a cluster: kafkaPort+i-1
	kafkaCtrl    = 25095 // node i's controller: kafkaCtrl+i-1
)

// Broker kinds.
const (
	brokerKafka = "kafka" // Apache Kafka via deploy/kafka/kafka.sh
	brokerKfake = "kfake" // the embedded franz-go broker, as a process
)

// binaries are the programs a run starts in the namespaces, built with
// go build -o.
type binaries struct{ aggregator, function, netbench string }

// build compiles the three commands into dir.
func build(ctx context.Context, dir string, log *slog.Logger) (binaries, error) {
	b := binaries{
		aggregator: filepath.Join(dir, "aggregator"),
		function:   filepath.Join(dir, "function"),
		netbench:   filepath.Join(dir, "netbench"),
	}
	for pkg, out := range map[string]string{
		"github.com/fdxkafka/fdxkafka/aggregator":           b.aggregator,
		"github.com/fdxkafka/fdxkafka/function/cmd":         b.function,
		"github.com/fdxkafka/fdxkafka/evaluations/netbench": b.netbench,
	} {
		start := time.Now()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			return binaries{}, fmt.Errorf("go build %s: %w: %s", pkg, err, out)
		}
		log.Info("built", "binary", out, "took", time.Since(start).Round(time.Millisecond))
	}
	return b, nil
}

// repoRoot is the module's root directory (where deploy/ lives).
func repoRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the fdxkafka module: run netbench from the repository")
	}
	return filepath.Dir(mod), nil
}

// bed is a built testbed with what runs on it: binaries, brokers, a
// working directory.
type bed struct {
	tb          *testbed.Testbed
	dir         string
	bins        binaries
	kafkaSh     string
	brokerKind  string
	clientHosts []string
	log         *slog.Logger
	// brokers currently running: their count and (for CPU accounting)
	// the JVMs' pids by host, or the kfake process.
	brokers    int
	brokerPids map[string]int
	kfake      *exec.Cmd
}

// addr returns host's address.
func (b *bed) addr(host string) string { return b.tb.Host(host).Addr.String() }

// brokerList is the bootstrap list of the running brokers.
func (b *bed) brokerList() string {
	var l []string
	for i := 1; i <= b.brokers; i++ {
		l = append(l, net.JoinHostPort(b.addr(brokerHost(i)), strconv.Itoa(kafkaPort+i-1)))
	}
	return strings.Join(l, ",")
}

// kafkaEnv is kafka.sh's environment for a cluster of k nodes on hosts
// b1..bk.
func (b *bed) kafkaEnv(k int) []string {
	env := append(os.Environ(),
		"FDX_KAFKA_PORT="+strconv.Itoa(kafkaPort),
		"FDX_KAFKA_CONTROLLER_PORT="+strconv.Itoa(kafkaCtrl),
		"FDX_KAFKA_DIR="+filepath.Join(b.dir, "kafka"+strconv.Itoa(k)),
		"FDX_KAFKA_START_TIMEOUT=180",
		"FDX_KAFKA_STOP_TIMEOUT=30",
		// 100 MB models pass as 1 MiB chunks; the heap holds requests in
		// flight, not the log.
		"FDX_KAFKA_HEAP_OPTS=-Xms256m -Xmx768m",
	)
	if k == 1 {
		a := b.addr(brokerHost(1))
		return append(env, "FDX_KAFKA_NODES=1", "FDX_KAFKA_HOST="+a, "FDX_KAFKA_BIND="+a)
	}
	var hosts, nss []string
	for i := 1; i <= k; i++ {
		hosts = append(hosts, b.addr(brokerHost(i)))
		nss = append(nss, b.tb.Host(brokerHost(i)).NS)
	}
	return append(env, "FDX_KAFKA_NODES="+strconv.Itoa(k),
		"FDX_KAFKA_NODE_HOSTS="+strings.Join(hosts, ","), "FDX_KAFKA_NODE_NETNS="+strings.Join(nss, ","))
}

// kafkaSh runs kafka.sh CMD for a cluster of k nodes: a single node inside
// b1's namespace, a cluster from here (kafka.sh enters each node's
// namespace itself).
func (b *bed) kafkaCmd(ctx context.Context, k int, arg string) error {
	var cmd *exec.Cmd
	if k == 1 {
		var err error
		if cmd, err = b.tb.Command(ctx, brokerHost(1), "bash", b.kafkaSh, arg); err != nil {
			return err
		}
	} else {
		cmd = exec.CommandContext(ctx, "bash", b.kafkaSh, arg)
	}
	cmd.Env = b.kafkaEnv(k)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kafka.sh %s (%d nodes): %w: %s", arg, k, err, lastLines(out.String(), 20))
	}
	b.log.Info("kafka.sh "+arg, "nodes", k, "out", lastLines(out.String(), 2))
	return nil
}

// startBrokers starts k brokers (stopping any running ones first).
func (b *bed) startBrokers(ctx context.Context, k int) error {
	if b.brokers == k {
		return nil
	}
	if err := b.stopBrokers(ctx); err != nil {
		return err
	}
	switch b.brokerKind {
	case brokerKfake:
		if k != 1 {
			return fmt.Errorf("the embedded broker runs alone: %d brokers need -broker %s", k, brokerKafka)
		}
		cmd, err := b.tb.Command(ctx, brokerHost(1), b.bins.netbench, "kfake", "-addr",
			net.JoinHostPort(b.addr(brokerHost(1)), strconv.Itoa(kafkaPort)))
		if err != nil {
			return err
		}
		logf, err := os.Create(filepath.Join(b.dir, "kfake.log"))
		if err != nil {
			return err
		}
		defer logf.Close()
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start kfake: %w", err)
		}
		b.kfake = cmd
		b.brokerPids = map[string]int{brokerHost(1): cmd.Process.Pid}
	default:
		if err := b.kafkaCmd(ctx, k, "start"); err != nil {
			_ = b.kafkaCmd(context.WithoutCancel(ctx), k, "stop")
			return err
		}
		b.brokerPids = map[string]int{}
		for i := 1; i <= k; i++ {
			pidFile := filepath.Join(b.dir, "kafka"+strconv.Itoa(k), "kafka.pid")
			if k > 1 {
				pidFile = filepath.Join(b.dir, "kafka"+strconv.Itoa(k), "node-"+strconv.Itoa(i), "kafka.pid")
			}
			raw, err := os.ReadFile(pidFile)
			if err != nil {
				return fmt.Errorf("broker pid: %w", err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
			if err != nil {
				return fmt.Errorf("broker pid file %s: %w", pidFile, err)
			}
			b.brokerPids[brokerHost(i)] = pid
		}
	}
	b.brokers = k
	return nil
}

// stopBrokers stops the running brokers, if any.
func (b *bed) stopBrokers(ctx context.Context) error {
	if b.brokers == 0 {
		return nil
	}
	k := b.brokers
	b.brokers, b.brokerPids = 0, nil
	if b.kfake != nil {
		_ = b.kfake.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- b.kfake.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = b.kfake.Process.Kill()
			<-done
		}
		b.kfake = nil
		return nil
	}
	return b.kafkaCmd(context.WithoutCancel(ctx), k, "stop")
}

// runKfake is `netbench kfake`: the embedded broker as a process, for a
// testbed without Apache Kafka's jars.
func runKfake(ctx context.Context, args []string) error {
	if len(args) != 2 || args[0] != "-addr" {
		return errors.New("usage: netbench kfake -addr HOST:PORT")
	}
	addr := args[1]
	// kfake listens on 127.0.0.1 and advertises its listener's address:
	// listening on the host's testbed address makes it reachable from the
	// other namespaces and advertise that address.
	b, err := embedded.Start(embedded.Options{Addr: addr, Extra: []kfake.Opt{
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, addr) }),
	}})
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Println("embedded broker at", b.Addr())
	<-ctx.Done()
	return nil
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// tailFile returns the last n lines of a file, for error messages.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return lastLines(string(b), n)
}
