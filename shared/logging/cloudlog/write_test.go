package cloudlog

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	logpb "cloud.google.com/go/logging/apiv2/loggingpb"
	"github.com/fdxkafka/fdxkafka/shared/logging"
	"google.golang.org/api/option"
	mrpb "google.golang.org/genproto/googleapis/api/monitoredres"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// loggingServer is a Cloud Logging API endpoint on loopback: it answers
// WriteLogEntries with deny (when set) or records the entries.
type loggingServer struct {
	logpb.UnimplementedLoggingServiceV2Server
	deny error

	mu      sync.Mutex
	entries []*logpb.LogEntry
}

func (s *loggingServer) WriteLogEntries(_ context.Context, req *logpb.WriteLogEntriesRequest) (*logpb.WriteLogEntriesResponse, error) {
	if s.deny != nil {
		return nil, s.deny
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range req.GetEntries() {
		if e.GetLogName() == "" {
			e.LogName = req.GetLogName()
		}
		s.entries = append(s.entries, e)
	}
	return &logpb.WriteLogEntriesResponse{}, nil
}

// startLoggingServer serves s on a loopback port and returns client
// options that reach it without credentials.
func startLoggingServer(t *testing.T, s *loggingServer) []option.ClientOption {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	logpb.RegisterLoggingServiceV2Server(srv, s)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return []option.ClientOption{option.WithGRPCConn(conn)}
}

var globalResource = &mrpb.MonitoredResource{Type: "global", Labels: map[string]string{"project_id": "proj"}}

// TestNewCloudPermissionDenied: credentials that may not write logs make
// setup fail with an error that names the missing role, instead of a
// logger that loses every entry.
func TestNewCloudPermissionDenied(t *testing.T) {
	s := &loggingServer{deny: status.Error(codes.PermissionDenied,
		"Permission 'logging.logEntries.create' denied on resource (or it may not exist).")}
	copts := startLoggingServer(t, s)
	ctx := context.Background()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()

	l, closeFn, err := newCloud(ctx, sctx, logging.Options{LogName: "fdx-test"}, "proj", globalResource, copts...)
	if err == nil {
		_ = closeFn()
		t.Fatalf("newCloud succeeded (logger %v) although the server denies writes", l)
	}
	t.Logf("error: %v", err)
	for _, want := range []string{"not allowed to write log \"fdx-test\" in project \"proj\"", "roles/logging.logWriter", "logging.logEntries.create"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q", want)
		}
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("status code of the wrapped error = %v, want PermissionDenied", status.Code(err))
	}
}

// TestNewCloudOtherWriteError: any other failed first write is a setup
// error too, without the permission advice.
func TestNewCloudOtherWriteError(t *testing.T) {
	s := &loggingServer{deny: status.Error(codes.NotFound, "project proj not found")}
	copts := startLoggingServer(t, s)
	ctx := context.Background()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()

	_, _, err := newCloud(ctx, sctx, logging.Options{}, "proj", globalResource, copts...)
	if err == nil {
		t.Fatal("newCloud succeeded although the server fails writes")
	}
	if !strings.Contains(err.Error(), `cannot write log "fdxkafka" in project "proj"`) || strings.Contains(err.Error(), "logWriter") {
		t.Errorf("error = %v, want a write error without the permission advice", err)
	}
}

// TestNewCloudWritesFirstEntry: with write permission, setup succeeds after
// one entry reached the API, and later records arrive after close.
func TestNewCloudWritesFirstEntry(t *testing.T) {
	s := &loggingServer{}
	copts := startLoggingServer(t, s)
	ctx := context.Background()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()

	l, closeFn, err := newCloud(ctx, sctx, logging.Options{LogName: "fdx-test"}, "proj", globalResource, copts...)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	n := len(s.entries)
	s.mu.Unlock()
	if n != 1 {
		t.Fatalf("after setup the server holds %d entries, want the 1 startup entry", n)
	}
	l.Info("round closed", "round", 1)
	if err := closeFn(); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.entries) != 2 {
		t.Fatalf("server holds %d entries, want 2", len(s.entries))
	}
	for _, e := range s.entries {
		if !strings.HasSuffix(e.GetLogName(), "/logs/fdx-test") {
			t.Errorf("entry log name = %q, want .../logs/fdx-test", e.GetLogName())
		}
	}
	if msg := s.entries[1].GetJsonPayload().GetFields()["message"].GetStringValue(); msg != "round closed" {
		t.Errorf("second entry message = %q, want %q", msg, "round closed")
	}
}
