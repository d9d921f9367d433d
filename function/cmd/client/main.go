// Command client is a long-running participant, the Go successor of the
// PoC's client.py: it stays connected and takes part in every round until
// the job's final model appears.
//
//	go run ./function/cmd/client --broker 127.0.0.1:9092 --channel kafka --client-id 7
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fdxkafka/fdxkafka/function"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
}

func run() error {
	broker := flag.String("broker", "127.0.0.1:9092", "Kafka bootstrap servers, or the gRPC aggregator's address with --channel grpc")
	ch := flag.String("channel", "kafka", "kafka or grpc")
	id := flag.String("client-id", "", "this client's id; a number k trains on shard k mod N")
	job := flag.String("job", "mnist", "job id")
	wait := flag.Duration("wait", 10*time.Minute, "how long to wait for one round's model")
	props := flag.String("kafka-config", "", "librdkafka properties file (SASL, TLS)")
	grpcCA := flag.String("grpc-ca", "", "gRPC: CA of the aggregator's certificate (enables TLS)")
	grpcCert := flag.String("grpc-cert", "", "gRPC: client certificate for mutual TLS")
	grpcKey := flag.String("grpc-key", "", "gRPC: client key for mutual TLS")
	grpcToken := flag.String("grpc-token", "", "gRPC: bearer token (or env FDX_GRPC_TOKEN)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	var kprops map[string]string
	if *props != "" {
		var err error
		if kprops, err = kafkachan.LoadProperties(*props); err != nil {
			return err
		}
	}
	req, err := function.ParseRequest(function.RequestJSON(*broker, *id, *ch, *job, wait.Seconds()), function.Defaults{})
	if err != nil {
		return fmt.Errorf("flags: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg := function.Config{Logger: log, KafkaProperties: kprops, GRPCToken: *grpcToken}
	if cfg.GRPCToken == "" {
		cfg.GRPCToken = os.Getenv("FDX_GRPC_TOKEN")
	}
	if *grpcCA != "" || *grpcCert != "" {
		t, err := grpcchan.ClientTLS(*grpcCA, *grpcCert, *grpcKey, "")
		if err != nil {
			return err
		}
		cfg.GRPCTLS = t
	}
	srv := function.NewServer(cfg)
	return function.Follow(ctx, srv, req, log)
}
