// Command cmd serves the function locally under functions-framework-go, as
// the Cloud Functions runtime would: PORT (default 8080) and
// FUNCTION_TARGET=Handler.
package main

import (
	"log/slog"
	"os"

	"github.com/GoogleCloudPlatform/functions-framework-go/funcframework"

	_ "github.com/fdxkafka/fdxkafka/function" // registers "Handler"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if os.Getenv("FUNCTION_TARGET") == "" {
		os.Setenv("FUNCTION_TARGET", "Handler")
	}
	slog.Info("serving function", "target", os.Getenv("FUNCTION_TARGET"), "port", port)
	if err := funcframework.StartHostPort(os.Getenv("HOST"), port); err != nil {
		slog.Error("function server", "err", err)
		os.Exit(1)
	}
}
