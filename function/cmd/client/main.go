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
	srv := function.NewServer(function.Config{Logger: log, KafkaProperties: kprops})
	return function.Follow(ctx, srv, req, log)
}
