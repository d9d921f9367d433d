package logging

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// Trace identifies the Cloud Trace span a log record belongs to. Cloud
// Logging groups entries by it, so every line a function logs while serving
// one request shows up under that request.
type Trace struct {
	// TraceID is 32 lowercase hex digits.
	TraceID string
	// SpanID is 16 lowercase hex digits, or empty.
	SpanID string
	// Sampled reports whether the caller asked for the request to be traced.
	Sampled bool
	// Project is the project HTTPMiddleware was given, used for the trace
	// resource name when the logger has none of its own.
	Project string
}

// Resource returns the trace's resource name as Cloud Logging wants it,
// "projects/<project>/traces/<id>". Without a project it returns the bare
// trace ID, which Cloud Logging stores but cannot link to Cloud Trace.
func (t Trace) Resource(project string) string {
	if project == "" {
		return t.TraceID
	}
	return "projects/" + project + "/traces/" + t.TraceID
}

// traceKey is the context key for a Trace. An unexported type keeps other
// packages from colliding with it.
type traceKey struct{}

// ContextWithTrace returns a copy of ctx that carries t.
func ContextWithTrace(ctx context.Context, t Trace) context.Context {
	return context.WithValue(ctx, traceKey{}, t)
}

// TraceFromContext returns the Trace that ctx carries, if any.
func TraceFromContext(ctx context.Context) (Trace, bool) {
	if ctx == nil {
		return Trace{}, false
	}
	t, ok := ctx.Value(traceKey{}).(Trace)
	return t, ok
}

// WithTrace returns a copy of ctx carrying the trace in header, which may be
// either an X-Cloud-Trace-Context value ("TRACE_ID/SPAN_ID;o=1") or a W3C
// traceparent value ("00-TRACE_ID-SPAN_ID-FLAGS"); the format is detected.
// A header that is empty or malformed leaves ctx unchanged, because a bad
// trace header must never break a request.
func WithTrace(ctx context.Context, header string) context.Context {
	t, err := ParseTraceHeader(header)
	if err != nil {
		return ctx
	}
	return ContextWithTrace(ctx, t)
}

// ParseTraceHeader parses an X-Cloud-Trace-Context or a W3C traceparent
// header value.
func ParseTraceHeader(header string) (Trace, error) {
	header = strings.TrimSpace(header)
	// A traceparent value always has exactly three dashes; an
	// X-Cloud-Trace-Context value has none.
	if strings.Count(header, "-") == 3 {
		return ParseTraceparent(header)
	}
	return ParseCloudTraceContext(header)
}

// ParseCloudTraceContext parses the legacy Google header
// "X-Cloud-Trace-Context: TRACE_ID[/SPAN_ID][;o=OPTIONS]". Its span ID is
// decimal; it is returned as 16 hex digits, the form Cloud Logging's spanId
// field expects. o=1 means sampled.
func ParseCloudTraceContext(header string) (Trace, error) {
	rest, opts, hasOpts := strings.Cut(header, ";")
	traceID, spanID, hasSpan := strings.Cut(rest, "/")
	traceID = strings.ToLower(traceID)
	if !isHex(traceID, 32) || isZero(traceID) {
		return Trace{}, fmt.Errorf("logging: X-Cloud-Trace-Context %q: trace ID is not 32 hex digits", header)
	}
	t := Trace{TraceID: traceID}
	if hasSpan && spanID != "" {
		n, err := strconv.ParseUint(spanID, 10, 64)
		if err != nil {
			return Trace{}, fmt.Errorf("logging: X-Cloud-Trace-Context %q: span ID: %w", header, err)
		}
		if n != 0 {
			t.SpanID = fmt.Sprintf("%016x", n)
		}
	}
	if hasOpts {
		t.Sampled = strings.TrimSpace(opts) == "o=1"
	}
	return t, nil
}

// ParseTraceparent parses a W3C trace context header
// "traceparent: VERSION-TRACE_ID-PARENT_ID-FLAGS"
// (https://www.w3.org/TR/trace-context/#traceparent-header). Bit 0 of the
// flags means sampled.
func ParseTraceparent(header string) (Trace, error) {
	parts := strings.Split(strings.ToLower(header), "-")
	if len(parts) != 4 {
		return Trace{}, fmt.Errorf("logging: traceparent %q: want 4 dash-separated fields", header)
	}
	version, traceID, spanID, flags := parts[0], parts[1], parts[2], parts[3]
	switch {
	case !isHex(version, 2) || version == "ff":
		return Trace{}, fmt.Errorf("logging: traceparent %q: bad version", header)
	case !isHex(traceID, 32) || isZero(traceID):
		return Trace{}, fmt.Errorf("logging: traceparent %q: bad trace ID", header)
	case !isHex(spanID, 16) || isZero(spanID):
		return Trace{}, fmt.Errorf("logging: traceparent %q: bad parent ID", header)
	case !isHex(flags, 2):
		return Trace{}, fmt.Errorf("logging: traceparent %q: bad flags", header)
	}
	f, _ := strconv.ParseUint(flags, 16, 8) // checked by isHex above
	return Trace{TraceID: traceID, SpanID: spanID, Sampled: f&1 == 1}, nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func isZero(s string) bool { return strings.Trim(s, "0") == "" }

// HTTPMiddleware returns a handler that puts the request's trace into its
// context before calling next, so that logger.InfoContext(r.Context(), ...)
// in next carries the trace. It prefers traceparent over
// X-Cloud-Trace-Context, as Cloud Run sends both and the W3C header is the
// one other tracing systems propagate. project, if not empty, names the
// project for the trace resource when the logger has no ProjectID itself.
func HTTPMiddleware(next http.Handler, project string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if t, ok := requestTrace(r); ok {
			t.Project = project
			r = r.WithContext(ContextWithTrace(r.Context(), t))
		}
		next.ServeHTTP(w, r)
	})
}

// requestTrace returns the trace from r's headers, if one is valid.
func requestTrace(r *http.Request) (Trace, bool) {
	if h := r.Header.Get("traceparent"); h != "" {
		if t, err := ParseTraceparent(h); err == nil {
			return t, true
		}
	}
	if h := r.Header.Get("X-Cloud-Trace-Context"); h != "" {
		if t, err := ParseCloudTraceContext(h); err == nil {
			return t, true
		}
	}
	return Trace{}, false
}
