package function

import (
	"log/slog"
	"net/http"
	"os"
	"sync"
)

// WarnUnauthenticated wraps next so that an instance on Cloud Run functions
// logs one warning when it first serves a request without an Authorization
// header, then serves every request as before.
//
// Cloud Run checks the caller's identity token, sent as Authorization or
// X-Serverless-Authorization, and passes the header on, so a request with
// neither can only arrive when the function was deployed with
// --allow-unauthenticated. The function itself checks no
// credentials: anyone who knows the URL can then make it train and submit
// updates in any client's name. Refusing such requests would break
// deployments that mean to be public (e.g. behind restricted ingress), so
// this only makes the exposure visible in the log, once per instance rather
// than on every invocation.
//
// Outside Cloud Run (local runs, tests) it returns next unchanged. A nil log
// means slog.Default().
func WarnUnauthenticated(next http.Handler, log *slog.Logger) http.Handler {
	return warnUnauthenticated(next, log, os.Getenv)
}

// warnUnauthenticated takes the environment lookup as a parameter so that
// tests can pretend to run on Cloud Run.
func warnUnauthenticated(next http.Handler, log *slog.Logger, getenv func(string) string) http.Handler {
	// K_SERVICE is set on every Cloud Run service, FUNCTION_TARGET by the
	// functions runtime.
	service := getenv("K_SERVICE")
	if service == "" && getenv("FUNCTION_TARGET") == "" {
		return next
	}
	if log == nil {
		log = slog.Default()
	}
	var once sync.Once
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" && r.Header.Get("X-Serverless-Authorization") == "" {
			once.Do(func() {
				log.WarnContext(r.Context(),
					"function reachable without authentication: a request arrived without an Authorization header, "+
						"so the function was likely deployed with --allow-unauthenticated and nothing else protects it; "+
						"redeploy with --no-allow-unauthenticated and grant roles/run.invoker to the invokers",
					"service", service, "method", r.Method, "path", r.URL.Path)
			})
		}
		next.ServeHTTP(w, r)
	})
}
