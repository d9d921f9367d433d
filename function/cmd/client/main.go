// Command client is a long-running participant, the Go successor of the
// PoC's client.py: it stays connected and takes part in every round until
// the job's final model appears.
//
//	go run ./function/cmd/client --broker 127.0.0.1:9092 --channel kafka --client-id 7
package main

import (
	"cmp"
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/internal/cli"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

func main() { cli.Main("client", run) }

func run(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.SetOutput(stderr)
	broker := fs.String("broker", "127.0.0.1:9092", "Kafka bootstrap servers, or the gRPC aggregator's address with --channel grpc")
	ch := fs.String("channel", "kafka", "kafka or grpc")
	id := fs.String("client-id", "", "this client's id; a number k trains on shard k mod N")
	job := fs.String("job", "mnist", "job id")
	wait := fs.Duration("wait", 10*time.Minute, "how long to wait for one round's model")
	props := fs.String("kafka-config", "", "Kafka client properties file (SASL, TLS)")
	grpcCA := fs.String("grpc-ca", "", "gRPC: CA of the aggregator's certificate (enables TLS)")
	grpcCert := fs.String("grpc-cert", "", "gRPC: client certificate for mutual TLS")
	grpcKey := fs.String("grpc-key", "", "gRPC: client key for mutual TLS")
	grpcToken := fs.String("token", "", "this client's token: gRPC bearer token and Kafka update MAC key (or env FDX_CLIENT_TOKEN)")
	pubKey := fs.String("model-pubkey", os.Getenv("FDX_MODEL_PUBKEY"), "the aggregator's model-signing public key (PEM file); unsigned or forged models are ignored")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	t := participant.Target{Channel: *ch, Broker: *broker, Job: *job, ClientID: *id}
	if err := t.Validate(); err != nil {
		return cli.Usagef("%v", err)
	}
	tr := participant.Transport{Logger: log, Token: *grpcToken}
	if *props != "" {
		var err error
		if tr.KafkaProperties, err = kafkachan.LoadProperties(*props); err != nil {
			return err
		}
	}
	if tr.Token == "" {
		tr.Token = cmp.Or(os.Getenv("FDX_CLIENT_TOKEN"), os.Getenv("FDX_GRPC_TOKEN"))
	}
	if *pubKey != "" {
		v, err := trust.VerifierFrom(*pubKey)
		if err != nil {
			return cli.Usagef("--model-pubkey: %v", err)
		}
		tr.ModelVerifier = v
	} else {
		log.Warn("no --model-pubkey: models read from Kafka are not verified")
	}
	if *grpcCA != "" || *grpcCert != "" {
		cfg, err := grpcchan.ClientTLS(*grpcCA, *grpcCert, *grpcKey, "")
		if err != nil {
			return err
		}
		tr.GRPCTLS = cfg
	}
	p := &participant.Participant{Data: dataset.NewCatalog(), Log: log}
	return p.Follow(ctx, tr, t, participant.FollowOptions{RoundTimeout: *wait})
}
