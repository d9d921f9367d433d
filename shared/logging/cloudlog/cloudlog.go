// Package cloudlog writes slog records through the Cloud Logging API, for
// the aggregator on a VM where no agent parses its stdout. It is apart from
// package logging so that the Cloud Function, which logs JSON to stdout,
// does not link the Cloud Logging client.
package cloudlog

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/auth/credentials"
	"cloud.google.com/go/compute/metadata"
	cloudlogging "cloud.google.com/go/logging"
	logpb "cloud.google.com/go/logging/apiv2/loggingpb"
	"github.com/fdxkafka/fdxkafka/shared/logging"
	"google.golang.org/api/option"
	mrpb "google.golang.org/genproto/googleapis/api/monitoredres"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// defaultLogName is the log the cloud format writes to when
	// logging.Options.LogName is empty.
	defaultLogName = "fdxkafka"
	// defaultSetupTimeout bounds New's metadata and credential checks.
	// Ten seconds covers a slow metadata server on a VM that is still
	// booting, and is short enough that a misconfigured binary fails at
	// start instead of appearing to hang.
	defaultSetupTimeout = 10 * time.Second
)

// New returns a logger that writes through the Cloud Logging API to the
// log opts.LogName in the project opts.ProjectID (else GOOGLE_CLOUD_PROJECT
// or GCP_PROJECT, else the metadata server's project), and a function that
// flushes the buffered entries and closes the client; call it before the
// process exits, or the last entries are lost.
//
// New finds the project, checks that Application Default Credentials
// yield an access token, detects the monitored resource and writes one
// entry synchronously, all within opts.SetupTimeout, and returns an error
// saying what is missing instead of hanging when no metadata server or
// credentials are reachable, or when the credentials may not write logs.
// After that, entries are sent in the background in batches; send errors
// are reported by the client library on stderr and by the close function.
func New(ctx context.Context, opts logging.Options) (*slog.Logger, func() error, error) {
	timeout := opts.SetupTimeout
	if timeout <= 0 {
		timeout = defaultSetupTimeout
	}
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	md := newMetadataClient(timeout)

	project, err := cloudProject(sctx, opts, md)
	if err != nil {
		return nil, nil, err
	}
	creds, err := credentials.DetectDefault(&credentials.DetectOptions{
		Scopes: []string{cloudlogging.WriteScope},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("logging: cloud format: no Application Default Credentials "+
			"(set GOOGLE_APPLICATION_CREDENTIALS, run `gcloud auth application-default login`, "+
			"or run on GCE with a service account): %w", err)
	}
	if _, err := creds.Token(sctx); err != nil {
		return nil, nil, fmt.Errorf("logging: cloud format: cannot get an access token within %v: %w", timeout, err)
	}

	res := monitoredResource(sctx, md, project)
	return newCloud(ctx, sctx, opts, project, res, option.WithAuthCredentials(creds))
}

// newCloud creates the Cloud Logging client with copts and proves that it
// may write: it sends one entry and waits for the answer within sctx's
// deadline. The client library otherwise sends in the background and only
// prints failures on stderr, so a service account without
// roles/logging.logWriter, or a VM without the logging.write scope, would
// lose every entry while the process looks healthy.
func newCloud(ctx, sctx context.Context, opts logging.Options, project string, res *mrpb.MonitoredResource, copts ...option.ClientOption) (*slog.Logger, func() error, error) {
	var lopts []cloudlogging.LoggerOption
	if res != nil {
		lopts = append(lopts, cloudlogging.CommonResource(res))
	}
	// The client outlives New, so it gets the caller's context, not
	// the setup deadline.
	client, err := cloudlogging.NewClient(ctx, "projects/"+project, copts...)
	if err != nil {
		return nil, nil, fmt.Errorf("logging: cloud format: creating the Cloud Logging client for project %q: %w", project, err)
	}
	logName := opts.LogName
	if logName == "" {
		logName = defaultLogName
	}
	sink := client.Logger(logName, lopts...)
	first := cloudlogging.Entry{
		Timestamp: time.Now(),
		Severity:  cloudlogging.Info,
		Payload:   map[string]any{"message": "logging to Cloud Logging", "logger": "fdxkafka"},
	}
	if err := sink.LogSync(sctx, first); err != nil {
		_ = client.Close() // the write error is the one worth reporting
		if status.Code(err) == codes.PermissionDenied {
			return nil, nil, fmt.Errorf("logging: cloud format: not allowed to write log %q in project %q: "+
				"grant the service account roles/logging.logWriter (on a GCE VM also the logging.write scope): %w",
				logName, project, err)
		}
		return nil, nil, fmt.Errorf("logging: cloud format: cannot write log %q in project %q: %w", logName, project, err)
	}
	h := &cloudHandler{
		sink:      sink,
		project:   project,
		level:     opts.Level,
		addSource: opts.AddSource,
	}
	closeFn := func() error {
		if err := client.Close(); err != nil {
			return fmt.Errorf("logging: flushing and closing Cloud Logging log %q: %w", logName, err)
		}
		return nil
	}
	return slog.New(h), closeFn, nil
}

// newMetadataClient returns a metadata client whose every request ends
// within timeout. The package's default client retries without an overall
// deadline.
func newMetadataClient(timeout time.Duration) *metadata.Client {
	return metadata.NewWithOptions(&metadata.Options{Client: &http.Client{Timeout: timeout}})
}

// cloudProject finds the project to write to: the configured one, else the
// environment's, else the metadata server's.
func cloudProject(ctx context.Context, opts logging.Options, md *metadata.Client) (string, error) {
	if p := cmp.Or(opts.ProjectID, logging.ProjectFromEnv()); p != "" {
		return p, nil
	}
	// GetWithContext rather than ProjectIDWithContext: the latter caches the
	// answer in a package variable, which would outlive a test's fake
	// metadata server.
	p, err := md.GetWithContext(ctx, "project/project-id")
	if err == nil {
		p = strings.TrimSpace(p)
	}
	if err == nil && p == "" {
		err = errors.New("empty project ID")
	}
	if err != nil {
		return "", fmt.Errorf("logging: cloud format: no project ID: pass one (ProjectID, --project) "+
			"or set GOOGLE_CLOUD_PROJECT, or run where the metadata server answers: %w", err)
	}
	return p, nil
}

// monitoredResource returns the resource that entries are attributed to, so
// that the Logs Explorer files them under the VM. On Cloud Run and Cloud
// Run functions it returns nil and lets the client library detect the
// resource, which knows those platforms' labels. Off Google Cloud, or when
// the metadata server does not say which instance this is, entries go to the
// project's "global" resource. Detecting it here, within the setup deadline,
// keeps the client library from probing the metadata server itself without
// one.
func monitoredResource(ctx context.Context, md *metadata.Client, project string) *mrpb.MonitoredResource {
	if os.Getenv("K_SERVICE") != "" || os.Getenv("FUNCTION_TARGET") != "" {
		return nil
	}
	global := &mrpb.MonitoredResource{Type: "global", Labels: map[string]string{"project_id": project}}
	if !metadata.OnGCEWithContext(ctx) {
		return global
	}
	id, err := md.GetWithContext(ctx, "instance/id")
	if err != nil {
		return global
	}
	zone, err := md.GetWithContext(ctx, "instance/zone")
	if err != nil {
		return global
	}
	// The zone comes as projects/<number>/zones/<zone>.
	zone = strings.TrimSpace(zone)
	zone = zone[strings.LastIndex(zone, "/")+1:]
	return &mrpb.MonitoredResource{
		Type: "gce_instance",
		Labels: map[string]string{
			"project_id":  project,
			"instance_id": strings.TrimSpace(id),
			"zone":        zone,
		},
	}
}

// entryLogger is the part of *cloudlogging.Logger that cloudHandler uses;
// tests substitute a recorder so that nothing is sent.
type entryLogger interface {
	Log(e cloudlogging.Entry)
}

// cloudHandler turns slog records into Cloud Logging entries: the message
// and attributes become the JSON payload, and severity, time, trace, span
// and source location go into the entry's own fields.
type cloudHandler struct {
	sink      entryLogger
	project   string
	level     slog.Level
	addSource bool
	scope     logging.Scope
}

// Enabled implements slog.Handler.
func (h *cloudHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level
}

// Handle implements slog.Handler.
func (h *cloudHandler) Handle(ctx context.Context, r slog.Record) error {
	payload := make(map[string]any, r.NumAttrs()+1)
	addAttrs(payload, h.scope.Attrs(r))
	payload["message"] = r.Message // Cloud Logging shows it as the entry's summary
	e := cloudlogging.Entry{
		Timestamp: r.Time,
		Severity:  cloudlogging.ParseSeverity(logging.Severity(r.Level)),
		Payload:   payload,
	}
	if t, ok := logging.TraceFromContext(ctx); ok {
		// The API links a trace only within the project the entry is
		// written to, so the handler's project wins over the middleware's.
		e.Trace = t.Resource(h.project)
		e.SpanID = t.SpanID
		e.TraceSampled = t.Sampled
	}
	if h.addSource && r.PC != 0 {
		f, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		e.SourceLocation = &logpb.LogEntrySourceLocation{File: f.File, Line: int64(f.Line), Function: f.Function}
	}
	h.sink.Log(e)
	return nil
}

// WithAttrs implements slog.Handler.
func (h *cloudHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	h2 := *h
	h2.scope = h.scope.WithAttrs(attrs)
	return &h2
}

// WithGroup implements slog.Handler.
func (h *cloudHandler) WithGroup(name string) slog.Handler {
	h2 := *h
	h2.scope = h.scope.WithGroup(name)
	return &h2
}

// addAttrs adds attrs to m following slog's rules: empty attributes and
// empty groups are dropped, and a group with an empty key is inlined.
func addAttrs(m map[string]any, attrs []slog.Attr) {
	for _, a := range attrs {
		a.Value = a.Value.Resolve()
		if a.Equal(slog.Attr{}) {
			continue
		}
		if a.Value.Kind() != slog.KindGroup {
			m[a.Key] = jsonValue(a.Value)
			continue
		}
		if a.Key == "" {
			addAttrs(m, a.Value.Group())
			continue
		}
		sub := make(map[string]any)
		addAttrs(sub, a.Value.Group())
		if len(sub) > 0 {
			m[a.Key] = sub
		}
	}
}

// jsonValue converts a resolved, non-group slog value into something that
// encoding/json marshals without error, because the client library drops a
// whole entry whose payload fails to marshal.
func jsonValue(v slog.Value) any {
	switch v.Kind() {
	case slog.KindString:
		return v.String()
	case slog.KindInt64:
		return v.Int64()
	case slog.KindUint64:
		return v.Uint64()
	case slog.KindFloat64:
		f := v.Float64()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return strconv.FormatFloat(f, 'g', -1, 64)
		}
		return f
	case slog.KindBool:
		return v.Bool()
	case slog.KindDuration:
		return v.Duration().String()
	case slog.KindTime:
		return v.Time().Format(time.RFC3339Nano)
	}
	x := v.Any()
	if err, ok := x.(error); ok {
		return err.Error()
	}
	b, err := json.Marshal(x)
	if err != nil {
		return fmt.Sprintf("%+v", x)
	}
	return json.RawMessage(b)
}

// Open returns a logger in any format of package logging, including
// logging.FormatCloud, with a function that flushes and releases it (a
// no-op for the formats that write straight to w). Binaries with a --log-to
// flag call Open so that they need only one code path.
func Open(ctx context.Context, w io.Writer, opts logging.Options) (*slog.Logger, func() error, error) {
	if opts.Format == logging.FormatCloud {
		return New(ctx, opts)
	}
	l, err := logging.New(w, opts)
	if err != nil {
		return nil, nil, err
	}
	return l, func() error { return nil }, nil
}
