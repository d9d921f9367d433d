// Command aggregator runs a federated job: the long-running service on a GCE
// VM that publishes global models and aggregates the clients' updates, over
// Kafka (default) or gRPC (--grpc). The command itself is package
// aggregator/command; the demo binary (./demo) is the same command with
// clients run in its process.
//
//	aggregator --broker 127.0.0.1:9092 --minclients 10 --numrounds 5
//	aggregator --grpc --broker "[::]:8080" --minclients 10 --numrounds 5
//
// -h prints the flags by group. Exit codes: 0 on success, after -h, and
// after a first SIGTERM once the open round transaction is done; 1 on a
// failure; 2 on a command-line mistake; 75 when a Kafka round
// transaction's outcome is unknown (a commit that timed out, or a Kafka call
// stalled past its deadline): the supervisor restarts it and the restart
// resumes from what was committed; 143 on a second SIGTERM.
package main

import (
	"context"
	"io"

	"github.com/fdxkafka/fdxkafka/aggregator/command"
	"github.com/fdxkafka/fdxkafka/internal/cli"
)

func main() {
	cli.Main("aggregator", func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		return command.Run(ctx, args, stdout, stderr, command.Options{})
	})
}
