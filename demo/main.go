// Command demo runs a whole federation in one process: an in-memory Kafka
// broker, the aggregator's job and --clients clients, each running the
// Cloud Function's code (client/participant).
//
//	go run ./demo --clients 10 --minclients 10 --numrounds 3
//	go run ./demo --clients 10 --mode async --buffer-size 5 --numrounds 6
//	go run ./demo --grpc --broker 127.0.0.1:0 --clients 4 --strategy fedadam
//
// It takes every flag of the aggregator (package aggregator/command),
// whose binary links no client code, and the aggregator's exit codes.
// The embedded broker is the default channel; --grpc serves gRPC instead,
// and --embedded=false runs on the Kafka brokers of --broker.
package main

import (
	"context"
	"flag"
	"io"

	"github.com/fdxkafka/fdxkafka/aggregator/command"
	"github.com/fdxkafka/fdxkafka/aggregator/job"
	"github.com/fdxkafka/fdxkafka/internal/cli"
	"github.com/fdxkafka/fdxkafka/shared/model"
)

func main() { cli.Main("demo", run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return command.Run(ctx, args, stdout, stderr, (&demo{}).options())
}

const synopsis = `usage: demo [flags]

Runs a whole federation in one process: an in-memory Kafka broker (or the
gRPC channel, --grpc), the aggregator's job and --clients clients. Every
aggregator flag applies.

  demo --clients 10 --minclients 10 --numrounds 3
  demo --clients 10 --mode async --buffer-size 5 --numrounds 6`

// demo is the command line's clients.
type demo struct {
	clients int
}

func (d *demo) options() command.Options {
	return command.Options{
		Name:         "demo",
		Synopsis:     synopsis,
		Embedded:     true,
		Flags:        d.flags,
		Check:        d.check,
		LocalClients: d.runClients,
	}
}

func (d *demo) flags(fs *flag.FlagSet) cli.Group {
	fs.IntVar(&d.clients, "clients", 0, "clients to run in this process (default: --minclients, or --buffer-size if larger); they are the population, client ids 0..N-1")
	return cli.Group{Title: "Demo", Flags: []string{"clients"}}
}

// check refuses the jobs the demo's clients cannot finish, and makes its
// clients the population rounds sample from unless the flags name one.
func (d *demo) check(spec *job.Spec, role string) error {
	r := spec.Rounds
	switch {
	case role != "":
		return cli.Usagef("--role runs one process of a scaled-out job, without clients: run the aggregator binary")
	case spec.Training.Model == model.KindCNN:
		return cli.Usagef("--model %s: Go clients do not train it; run the aggregator and Python clients (clients/python/examples/cnn_jax.py)", model.KindCNN)
	case d.clients < 0:
		return cli.Usagef("--clients %d: want 1 or more", d.clients)
	case d.clients == 0:
		d.clients = max(r.MinClients, r.BufferSize)
	}
	switch {
	case d.clients < r.MinClients:
		return cli.Usagef("--clients %d is below --minclients %d: the rounds would never close", d.clients, r.MinClients)
	case d.clients < r.BufferSize:
		// A client trains once per version, so fewer clients than K
		// would never fill a buffer.
		return cli.Usagef("--clients %d is below --buffer-size %d: no version would ever close", d.clients, r.BufferSize)
	}
	if spec.Sampling.MinAvailableClients == 0 {
		spec.Sampling.MinAvailableClients = d.clients
	}
	return nil
}
