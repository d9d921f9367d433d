package logging_test

import (
	"log"
	"log/slog"
	"net/http"
	"os"

	"github.com/fdxkafka/fdxkafka/shared/logging"
)

// A Cloud Function logs in the gcp format and wraps its handler in
// HTTPMiddleware, so that every line logged with the request's context
// carries the request's trace.
func ExampleHTTPMiddleware() {
	logger, err := logging.New(os.Stdout, logging.Options{Format: logging.Detect(), AddSource: true})
	if err != nil {
		log.Fatal(err)
	}
	handler := func(w http.ResponseWriter, r *http.Request) {
		logger.InfoContext(r.Context(), "round done", "client_id", "7", slog.Group("bytes", "in", 1024, "out", 2048))
	}
	http.Handle("/", logging.HTTPMiddleware(http.HandlerFunc(handler), os.Getenv("GOOGLE_CLOUD_PROJECT")))
}
