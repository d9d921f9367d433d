package cloudlog_test

import (
	"context"
	"log"
	"os"

	"github.com/fdxkafka/fdxkafka/shared/logging"
	"github.com/fdxkafka/fdxkafka/shared/logging/cloudlog"
)

// A long-running binary takes the format from a flag and, for the cloud
// format, must flush before it exits.
func ExampleOpen() {
	opts := logging.Options{Format: logging.FormatCloud, LogName: "fdx-aggregator"}
	logger, closeLog, err := cloudlog.Open(context.Background(), os.Stderr, opts)
	if err != nil {
		log.Fatal(err) // e.g. no project or no credentials off Google Cloud
	}
	defer func() {
		if err := closeLog(); err != nil {
			log.Print(err)
		}
	}()
	logger.Info("aggregator started", "job", "mnist")
}
