// Package logging builds the one structured logger (log/slog) that every
// FDxKafka binary uses, so that the function, the aggregator and the tools
// log the same fields in the same shape wherever they run.
//
// Four output formats exist because the binaries run in four places:
//
//   - "text": key=value lines for a person at a terminal.
//   - "json": one JSON object per line for local log processors.
//   - "gcp": one JSON object per line in Cloud Logging's structured-logging
//     shape. On Cloud Run functions (and Cloud Run) the platform parses such
//     lines from stdout/stderr into structured entries, so no client library,
//     credentials or network call is needed inside a function.
//   - "cloud": entries written through the Cloud Logging API client. The
//     aggregator on a GCE VM uses it, because there nothing parses stdout
//     into structured entries unless the Ops Agent is configured to.
//
// Requests carry a Cloud Trace context; [HTTPMiddleware] puts it into the
// request's context and the handlers read it from the context passed to
// slog's *Context methods, so a function's log lines are grouped under the
// request that produced them.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
)

// Format selects how log records are written.
type Format string

// The formats. FormatAuto (or the empty Format) means "whatever [Detect]
// returns"; it never selects FormatCloud, because that one needs credentials
// and a project and should be asked for explicitly.
const (
	FormatAuto  Format = "auto"
	FormatText  Format = "text"
	FormatJSON  Format = "json"
	FormatGCP   Format = "gcp"
	FormatCloud Format = "cloud"
)

// ParseFormat returns the Format named by s ("auto", "text", "json", "gcp" or
// "cloud"; case is ignored). The empty string means FormatAuto.
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(strings.TrimSpace(s))); f {
	case "", FormatAuto:
		return FormatAuto, nil
	case FormatText, FormatJSON, FormatGCP, FormatCloud:
		return f, nil
	default:
		return "", fmt.Errorf("logging: unknown format %q (want auto, text, json, gcp or cloud)", s)
	}
}

// String implements flag.Value.
func (f *Format) String() string {
	if f == nil || *f == "" {
		return string(FormatAuto)
	}
	return string(*f)
}

// Set implements flag.Value, so a binary can declare
// flag.Var(&opts.Format, "log-to", ...) and get the validation for free.
func (f *Format) Set(s string) error {
	v, err := ParseFormat(s)
	if err != nil {
		return err
	}
	*f = v
	return nil
}

// Options configures a logger. The zero value logs at Info in the format
// [Detect] picks.
type Options struct {
	// Format selects the output format; empty or FormatAuto means Detect().
	Format Format
	// Level is the minimum level that is written.
	Level slog.Level
	// ProjectID is the Google Cloud project. The gcp format uses it for the
	// trace field ("projects/<ProjectID>/traces/<id>"); the cloud format
	// writes its entries into it. When empty, the gcp format uses the
	// project given to HTTPMiddleware, then the env variables
	// GOOGLE_CLOUD_PROJECT and GCP_PROJECT; the cloud format tries the env
	// variables and then asks the metadata server.
	ProjectID string
	// LogName is the log the cloud format writes to (default "fdxkafka").
	LogName string
	// AddSource adds the caller's file, line and function to each record.
	AddSource bool
	// SetupTimeout bounds how long NewCloud may spend finding the project,
	// checking credentials and detecting the monitored resource (default
	// 10s). It exists so that a VM without a reachable metadata server or a
	// laptop without credentials fails with an error instead of hanging.
	SetupTimeout time.Duration
}

// projectFromEnv returns the first non-empty project env variable, else "".
// GOOGLE_CLOUD_PROJECT is the current convention; GCP_PROJECT is what older
// Cloud Functions runtimes set.
// ProjectFromEnv returns the Google Cloud project the environment names
// (GOOGLE_CLOUD_PROJECT or GCP_PROJECT), or "".
func ProjectFromEnv() string {
	for _, k := range []string{"GOOGLE_CLOUD_PROJECT", "GCP_PROJECT"} {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	return ""
}

// Detect picks the format for the environment the process runs in: "gcp" on
// Cloud Run functions and Cloud Run (FUNCTION_TARGET or K_SERVICE set), where
// the platform parses structured JSON from stdout; "text" when stderr is a
// terminal, so a person reads it; otherwise "json", for whatever collects
// the output.
func Detect() Format {
	return detect(os.Getenv, isTerminal(os.Stderr))
}

func detect(getenv func(string) string, terminal bool) Format {
	switch {
	case getenv("FUNCTION_TARGET") != "" || getenv("K_SERVICE") != "":
		return FormatGCP
	case terminal:
		return FormatText
	default:
		return FormatJSON
	}
}

// isTerminal reports whether f is a character device. That is true for
// terminals and also for /dev/null; text output to /dev/null harms nobody,
// and it avoids a dependency on a terminal library.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	return fi.Mode()&os.ModeCharDevice != 0
}

// New returns a logger that writes to w in opts.Format. It does not support
// FormatCloud, which needs a context, network setup and a close function:
// use package cloudlog for that.
func New(w io.Writer, opts Options) (*slog.Logger, error) {
	h, err := NewHandler(w, opts)
	if err != nil {
		return nil, err
	}
	return slog.New(h), nil
}

// NewHandler is New without the *slog.Logger around the handler, for callers
// that combine handlers.
func NewHandler(w io.Writer, opts Options) (slog.Handler, error) {
	if w == nil {
		return nil, fmt.Errorf("logging: nil writer")
	}
	f := opts.Format
	if f == "" || f == FormatAuto {
		f = Detect()
	}
	hopts := &slog.HandlerOptions{AddSource: opts.AddSource, Level: opts.Level}
	switch f {
	case FormatText:
		return newContextHandler(slog.NewTextHandler(w, hopts), plainTraceAttrs), nil
	case FormatJSON:
		return newContextHandler(slog.NewJSONHandler(w, hopts), plainTraceAttrs), nil
	case FormatGCP:
		hopts.ReplaceAttr = gcpReplaceAttr
		project, envProject := opts.ProjectID, ProjectFromEnv()
		return newContextHandler(slog.NewJSONHandler(w, hopts), func(ctx context.Context) []slog.Attr {
			return gcpTraceAttrs(ctx, project, envProject)
		}), nil
	case FormatCloud:
		return nil, fmt.Errorf("logging: format %q needs cloudlog.Open (it has to be closed to flush)", f)
	default:
		return nil, fmt.Errorf("logging: unknown format %q", f)
	}
}

// Cloud Logging's special JSON fields, see
// https://cloud.google.com/logging/docs/structured-logging.
const (
	gcpSeverityKey     = "severity"
	gcpMessageKey      = "message"
	gcpSourceKey       = "logging.googleapis.com/sourceLocation"
	gcpTraceKey        = "logging.googleapis.com/trace"
	gcpSpanKey         = "logging.googleapis.com/spanId"
	gcpTraceSampledKey = "logging.googleapis.com/trace_sampled"
)

// severity maps a slog level to a Cloud Logging severity name. slog's levels
// are integers with gaps of 4, so everything between two named levels maps to
// the lower one, as slog itself prints it.
// Severity returns Cloud Logging's severity name for l.
func Severity(l slog.Level) string {
	switch {
	case l < slog.LevelInfo:
		return "DEBUG"
	case l < slog.LevelWarn:
		return "INFO"
	case l < slog.LevelError:
		return "WARNING"
	default:
		return "ERROR"
	}
}

// gcpReplaceAttr renames slog's built-in keys to Cloud Logging's. Only
// top-level keys are touched; the value types are checked so that a user
// attribute that happens to be called "level" keeps its name.
func gcpReplaceAttr(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.LevelKey:
		if l, ok := a.Value.Any().(slog.Level); ok {
			return slog.String(gcpSeverityKey, Severity(l))
		}
	case slog.MessageKey:
		if a.Value.Kind() == slog.KindString {
			a.Key = gcpMessageKey
		}
	case slog.SourceKey:
		// slog renders *slog.Source in JSON as {"function","file","line"},
		// which is exactly Cloud Logging's LogEntrySourceLocation.
		if _, ok := a.Value.Any().(*slog.Source); ok {
			a.Key = gcpSourceKey
		}
	}
	return a
}

// gcpTraceAttrs returns the trace fields for the record's context, or nil.
// The project is the configured one, else the one HTTPMiddleware stored with
// the trace, else the one from the environment.
func gcpTraceAttrs(ctx context.Context, project, envProject string) []slog.Attr {
	t, ok := TraceFromContext(ctx)
	if !ok {
		return nil
	}
	attrs := []slog.Attr{slog.String(gcpTraceKey, t.Resource(firstNonEmpty(project, t.Project, envProject)))}
	if t.SpanID != "" {
		attrs = append(attrs, slog.String(gcpSpanKey, t.SpanID))
	}
	if t.Sampled {
		attrs = append(attrs, slog.Bool(gcpTraceSampledKey, true))
	}
	return attrs
}

// plainTraceAttrs returns trace_id and span_id for the text and json
// formats, so that local logs can still be correlated per request.
func plainTraceAttrs(ctx context.Context) []slog.Attr {
	t, ok := TraceFromContext(ctx)
	if !ok {
		return nil
	}
	attrs := []slog.Attr{slog.String("trace_id", t.TraceID)}
	if t.SpanID != "" {
		attrs = append(attrs, slog.String("span_id", t.SpanID))
	}
	return attrs
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
