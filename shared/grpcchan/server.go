// Package grpcchan is the gRPC channel, the baseline the evaluation compares
// Kafka against: the aggregator serves fdx.v1.Aggregator and sends the model
// to every client separately. The messages are the same as on Kafka.
package grpcchan

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	fdxv1 "github.com/fdxkafka/fdxkafka/proto/fdx/v1"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// ServerOptions configure the aggregator's gRPC side.
type ServerOptions struct {
	// Addr to listen on, e.g. "[::]:8080" or "127.0.0.1:0".
	Addr string
	Job  string
	// MaxMessageBytes bounds every message; 0 means 64 MiB. Models and
	// updates of any size fit it: larger ones travel in chunks.
	MaxMessageBytes int
	// ChunkBytes is the chunk size of models streamed in chunks; 0 means
	// DefaultChunkBytes. It is capped to fit MaxMessageBytes.
	ChunkBytes int
	// MaxUpdateBytes bounds an update sent in chunks; 0 means the
	// protobuf limit (2 GiB).
	MaxUpdateBytes int
	// StateFile, when set, holds the newest published model,
	// StateFile+".updates" the updates accepted in the open round, so that a
	// restarted aggregator resumes without losing an accepted update, and
	// StateFile+".history" every committed round (see ReadHistory).
	StateFile string
	// TLS enables transport security; nil serves plaintext.
	TLS *tls.Config
	// Tokens, when non-empty, maps client id to its bearer token; calls
	// without a matching "authorization: Bearer <token>" are refused.
	Tokens map[string]string
	Logger *slog.Logger
	// AfterStore, when set, runs after an update is stored in the update
	// log and before it is folded and answered: the place where
	// fault-injection tests kill the process.
	AfterStore func(u *fdxv1.Update)
	// FinalLinger bounds how long Close keeps serving a final model to
	// the clients that contributed to it and have not received it yet: a
	// client whose last update was answered asks for the next model a
	// moment later, and a server already gone would leave it reconnecting
	// to nobody, never learning that the job ended (Kafka keeps the final
	// model in its topic; gRPC has only this process). Close returns as
	// soon as every contributor has the model; 0 closes at once (clients
	// that fetch no final model, such as Cloud Functions, need no wait).
	FinalLinger time.Duration
}

// Server serves the Aggregator service and implements channel.Server.
type Server struct {
	fdxv1.UnimplementedAggregatorServer
	opt     ServerOptions
	lis     net.Listener
	gs      *grpc.Server
	health  *health.Server
	count   channel.Counter
	updates chan channel.Delivery
	// refusals queues updates the transport refused, for counting.
	refusals chan channel.Delivery
	done     chan struct{}
	wal      *wal
	replay   []*fdxv1.Update

	mu      sync.Mutex
	current *fdxv1.GlobalModel
	// encoded is current serialized for chunked transfers, made once on
	// the first request for it.
	encoded *lazyEncoding
	changed chan struct{} // closed and replaced on every publish
	// delivered holds the clients that received the final model;
	// deliveredChanged is closed and replaced when it grows.
	delivered        map[string]bool
	deliveredChanged chan struct{}
	// lingering is closed when Close starts waiting for contributors.
	lingering chan struct{}
}

// lazyEncoding encodes a published model once, however many clients
// stream it.
type lazyEncoding struct {
	once sync.Once
	m    *fdxv1.GlobalModel
	size int
	enc  *encoded
	err  error
}

func (l *lazyEncoding) get() (*encoded, error) {
	l.once.Do(func() { l.enc, l.err = encode(l.m, l.size) })
	return l.enc, l.err
}

var _ channel.Server = (*Server)(nil)

// NewServer listens on opt.Addr and starts serving.
func NewServer(opt ServerOptions) (*Server, error) {
	if opt.Job == "" {
		return nil, errors.New("grpc server: no job id")
	}
	if opt.MaxMessageBytes <= 0 {
		opt.MaxMessageBytes = 64 << 20
	}
	if opt.MaxUpdateBytes <= 0 {
		opt.MaxUpdateBytes = maxTransferBytes
	}
	chunk, err := chunkSize(opt.ChunkBytes, opt.MaxMessageBytes)
	if err != nil {
		return nil, err
	}
	opt.ChunkBytes = chunk
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	var log *wal
	if opt.StateFile != "" {
		var err error
		if log, err = openWAL(opt.StateFile + ".updates"); err != nil {
			return nil, err
		}
	}
	lis, err := net.Listen("tcp", opt.Addr)
	if err != nil {
		log.close()
		return nil, fmt.Errorf("grpc listen %s: %w", opt.Addr, err)
	}
	s := &Server{
		wal:     log,
		opt:     opt,
		lis:     lis,
		updates: make(chan channel.Delivery),
		// Refusals need no answer from the loop; a bounded queue keeps a
		// flood of them from growing memory.
		refusals: make(chan channel.Delivery, 256),
		done:     make(chan struct{}),
		changed:  make(chan struct{}),

		delivered:        map[string]bool{},
		deliveredChanged: make(chan struct{}),
		lingering:        make(chan struct{}),
	}
	sopts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(opt.MaxMessageBytes),
		grpc.MaxSendMsgSize(opt.MaxMessageBytes),
		grpc.StatsHandler(counter{&s.count}),
	}
	if opt.TLS != nil {
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(opt.TLS)))
	}
	if len(opt.Tokens) > 0 {
		sopts = append(sopts, grpc.UnaryInterceptor(s.authUnary), grpc.StreamInterceptor(s.authStream))
	}
	s.gs = grpc.NewServer(sopts...)
	fdxv1.RegisterAggregatorServer(s.gs, s)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.gs, s.health)
	s.health.SetServingStatus(fdxv1.Aggregator_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	go func() {
		if err := s.gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			opt.Logger.Error("grpc serve", "err", err)
		}
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Latest implements channel.Server: the in-memory model, or the state
// file's. The state file is local to the aggregator, so there is nothing
// to walk back to: one that valid refuses is an error.
func (s *Server) Latest(ctx context.Context, valid func(*fdxv1.GlobalModel) error) (*fdxv1.GlobalModel, error) {
	s.mu.Lock()
	cur := s.current
	s.mu.Unlock()
	if cur != nil || s.opt.StateFile == "" {
		return cur, nil
	}
	b, err := os.ReadFile(s.opt.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state %s: %w", s.opt.StateFile, err)
	}
	m := &fdxv1.GlobalModel{}
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("decode state %s: %w", s.opt.StateFile, err)
	}
	if m.GetJob() != s.opt.Job {
		return nil, fmt.Errorf("state %s belongs to job %q, not %q", s.opt.StateFile, m.GetJob(), s.opt.Job)
	}
	if valid != nil {
		if err := valid(m); err != nil {
			return nil, fmt.Errorf("state %s: %w", s.opt.StateFile, err)
		}
	}
	if err := reconcileHistory(s.opt.StateFile, m); err != nil {
		return nil, err
	}
	if s.replay, err = s.wal.read(m.GetRound()); err != nil {
		return nil, err
	}
	// Serve the restored model at once: clients waiting for it need not
	// wait for the next round.
	s.setCurrent(m)
	return m, nil
}

func (s *Server) setCurrent(m *fdxv1.GlobalModel) {
	s.mu.Lock()
	s.current = m
	s.encoded = &lazyEncoding{m: m, size: s.opt.ChunkBytes}
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	s.health.SetServingStatus(fdxv1.Aggregator_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
}

// Publish implements channel.Server. With a state file the model is made
// durable (write, fsync, rename) before any client can see it.
func (s *Server) Publish(ctx context.Context, m *fdxv1.GlobalModel) error {
	if s.opt.StateFile != "" {
		if err := writeFileAtomic(s.opt.StateFile, m); err != nil {
			return fmt.Errorf("publish model round %d: %w", m.GetRound(), err)
		}
		if err := appendHistory(s.opt.StateFile+".history", m); err != nil {
			return fmt.Errorf("publish model round %d: %w", m.GetRound(), err)
		}
		// A crash before this reset leaves updates of a committed round
		// in the log; they are filtered out by round on replay.
		if err := s.wal.reset(); err != nil {
			return fmt.Errorf("publish model round %d: %w", m.GetRound(), err)
		}
	}
	s.setCurrent(m)
	return nil
}

func writeFileAtomic(path string, m *fdxv1.GlobalModel) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	// The rename is durable only once the directory is: a crash right
	// after it could otherwise bring back the previous round's model
	// while the update log, reset next, already belongs to this one.
	return syncDir(filepath.Dir(path))
}

// Next implements channel.Server.
func (s *Server) Next(ctx context.Context) (channel.Delivery, error) {
	if len(s.replay) > 0 {
		u := s.replay[0]
		s.replay = s.replay[1:]
		// Already accepted once: the logged copy needs no reply and must
		// not be logged again.
		return channel.Delivery{Update: u, Key: u.GetClientId(), Size: proto.Size(u)}, nil
	}
	select {
	case d := <-s.refusals:
		return d, nil
	case d := <-s.updates:
		return d, nil
	case <-ctx.Done():
		return channel.Delivery{}, ctx.Err()
	}
}

// Stats implements channel.Server.
func (s *Server) Stats() channel.Stats { return s.count.Stats() }

// Close stops serving; waiting calls end with Unavailable.
func (s *Server) Close() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	s.linger()
	close(s.done)
	defer s.wal.close()
	s.health.Shutdown()
	stopped := make(chan struct{})
	go func() { s.gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		s.gs.Stop()
	}
	return nil
}

// linger waits, up to FinalLinger, until every contributor of a final
// model has received it.
func (s *Server) linger() {
	m, _ := s.snapshot()
	if !m.GetFinal() || s.opt.FinalLinger <= 0 {
		return
	}
	close(s.lingering)
	timeout := time.NewTimer(s.opt.FinalLinger)
	defer timeout.Stop()
	for {
		missing, changed := s.undelivered(m)
		if len(missing) == 0 {
			return
		}
		select {
		case <-changed:
		case <-timeout.C:
			s.opt.Logger.Warn("closing although clients have not fetched the final model", "round", m.GetRound(), "clients", missing, "waited", s.opt.FinalLinger)
			return
		}
	}
}

// undelivered lists the contributors of m that have not received it.
func (s *Server) undelivered(m *fdxv1.GlobalModel) ([]string, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var missing []string
	for _, id := range m.GetContributors() {
		if !s.delivered[id] {
			missing = append(missing, id)
		}
	}
	return missing, s.deliveredChanged
}

// deliver records that clientID received m, if m is final.
func (s *Server) deliver(clientID string, m *fdxv1.GlobalModel) {
	if !m.GetFinal() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.delivered[clientID] {
		return
	}
	s.delivered[clientID] = true
	close(s.deliveredChanged)
	s.deliveredChanged = make(chan struct{})
}

func (s *Server) snapshot() (*fdxv1.GlobalModel, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current, s.changed
}

// encodedModel is m serialized for a chunked transfer (m is the current
// model or was; an older one is encoded afresh).
func (s *Server) encodedModel(m *fdxv1.GlobalModel) (*encoded, error) {
	s.mu.Lock()
	l := s.encoded
	s.mu.Unlock()
	if l == nil || l.m != m {
		l = &lazyEncoding{m: m, size: s.opt.ChunkBytes}
	}
	x, err := l.get()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "model round %d: %v", m.GetRound(), err)
	}
	return x, nil
}

func (s *Server) checkJob(job string) error {
	if job != s.opt.Job {
		return status.Errorf(codes.NotFound, "unknown job %q (this aggregator runs %q)", job, s.opt.Job)
	}
	return nil
}

// GetModel implements fdxv1.AggregatorServer.
func (s *Server) GetModel(ctx context.Context, req *fdxv1.GetModelRequest) (*fdxv1.GlobalModel, error) {
	m, err := s.waitModel(ctx, req)
	if err == nil {
		s.deliver(req.GetClientId(), m)
	}
	return m, err
}

// GetModelChunks implements fdxv1.AggregatorServer: GetModel in chunks.
func (s *Server) GetModelChunks(req *fdxv1.GetModelRequest, stream fdxv1.Aggregator_GetModelChunksServer) error {
	m, err := s.waitModel(stream.Context(), req)
	if err != nil {
		return err
	}
	x, err := s.encodedModel(m)
	if err != nil {
		return err
	}
	if err := x.send(stream.Send); err != nil {
		return err
	}
	s.deliver(req.GetClientId(), m)
	return nil
}

// waitModel returns the model GetModel asks for, once it exists.
func (s *Server) waitModel(ctx context.Context, req *fdxv1.GetModelRequest) (*fdxv1.GlobalModel, error) {
	if err := s.checkJob(req.GetJob()); err != nil {
		return nil, err
	}
	for {
		m, changed := s.snapshot()
		if m != nil && (m.GetRound() >= req.GetMinRound() || m.GetFinal()) {
			return m, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-s.done:
			// A job ends by publishing its final model and closing the
			// server at once: a caller woken by both must get the model,
			// or it would reconnect to nobody, never learning the job
			// ended.
			if m, _ := s.snapshot(); m.GetFinal() {
				return m, nil
			}
			return nil, status.Error(codes.Unavailable, "aggregator shutting down")
		}
	}
}

// WatchModels implements fdxv1.AggregatorServer.
func (s *Server) WatchModels(req *fdxv1.WatchModelsRequest, stream fdxv1.Aggregator_WatchModelsServer) error {
	return s.watch(stream.Context(), req, stream.Send)
}

// WatchModelChunks implements fdxv1.AggregatorServer: WatchModels with
// every model in chunks.
func (s *Server) WatchModelChunks(req *fdxv1.WatchModelsRequest, stream fdxv1.Aggregator_WatchModelChunksServer) error {
	return s.watch(stream.Context(), req, func(m *fdxv1.GlobalModel) error {
		x, err := s.encodedModel(m)
		if err != nil {
			return err
		}
		return x.send(stream.Send)
	})
}

// watch sends every model from req's round on until the final one.
func (s *Server) watch(ctx context.Context, req *fdxv1.WatchModelsRequest, send func(*fdxv1.GlobalModel) error) error {
	if err := s.checkJob(req.GetJob()); err != nil {
		return err
	}
	sendModel := func(m *fdxv1.GlobalModel) error {
		if err := send(m); err != nil {
			return err
		}
		s.deliver(req.GetClientId(), m)
		return nil
	}
	next := req.GetFromRound()
	for {
		m, changed := s.snapshot()
		if m != nil && m.GetRound() >= next {
			if err := sendModel(m); err != nil {
				return err
			}
			if m.GetFinal() {
				return nil
			}
			next = m.GetRound() + 1
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.done:
			if m, _ := s.snapshot(); m.GetFinal() && m.GetRound() >= next {
				return sendModel(m) // as in GetModel
			}
			return status.Error(codes.Unavailable, "aggregator shutting down")
		}
	}
}

// SubmitUpdate implements fdxv1.AggregatorServer: the update goes to the
// round loop, and the caller gets its verdict once the update is both
// stored and folded, or refused.
func (s *Server) SubmitUpdate(ctx context.Context, u *fdxv1.Update) (*fdxv1.SubmitUpdateResponse, error) {
	return s.submit(ctx, u, proto.Size(u))
}

// SubmitUpdateChunks implements fdxv1.AggregatorServer: SubmitUpdate in
// chunks. A transfer that is short or corrupt is refused (and counted) as
// rules.Incomplete or rules.Checksum without reaching the round loop's
// validation; a whole one goes the way of SubmitUpdate.
func (s *Server) SubmitUpdateChunks(stream fdxv1.Aggregator_SubmitUpdateChunksServer) error {
	whole, rej, err := receive(stream.Recv, int64(s.opt.MaxUpdateBytes))
	if err != nil {
		// The sender went away mid-transfer: nobody to answer, but the
		// loss is counted.
		s.refuse(nil, rules.Reject(rules.Incomplete, "chunked update: %v", err))
		return err
	}
	u := &fdxv1.Update{}
	if rej == nil {
		if err := proto.Unmarshal(whole, u); err != nil {
			rej = rules.Reject(rules.Undecodable, "chunked update of %d bytes: %v", len(whole), err)
		}
	}
	if rej != nil {
		s.refuse(nil, rej)
		return stream.SendAndClose(s.verdict(rej))
	}
	resp, err := s.submit(stream.Context(), u, len(whole))
	if err != nil {
		return err
	}
	return stream.SendAndClose(resp)
}

// verdict is the response for an update accepted (rej nil) or refused.
func (s *Server) verdict(rej *rules.Rejection) *fdxv1.SubmitUpdateResponse {
	cur, _ := s.snapshot()
	resp := &fdxv1.SubmitUpdateResponse{Accepted: rej == nil, Round: cur.GetRound()}
	if rej != nil {
		resp.Reason, resp.RejectReason = rej.Error(), rej.Reason.Proto()
	}
	return resp
}

// submit hands u, of size encoded bytes, to the round loop and waits for
// its verdict.
func (s *Server) submit(ctx context.Context, u *fdxv1.Update, size int) (*fdxv1.SubmitUpdateResponse, error) {
	if err := s.checkJob(u.GetJob()); err != nil {
		s.refuse(u, rules.Reject(rules.WrongJob, "job %q, this aggregator runs %q", u.GetJob(), s.opt.Job))
		return nil, err
	}
	if err := s.checkClient(ctx, u.GetClientId()); err != nil {
		s.refuse(u, rules.Reject(rules.Unauthenticated, "client %q: missing or wrong bearer token", u.GetClientId()))
		return nil, err
	}
	reply := make(chan *rules.Rejection, 1)
	d := channel.NewDelivery(u, size, func() error { return s.store(u) }, func(rej *rules.Rejection) { reply <- rej })
	d.Key = u.GetClientId()
	select {
	case s.updates <- d:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-s.done:
		return nil, status.Error(codes.Unavailable, "aggregator shutting down")
	}
	answer := func(rej *rules.Rejection) (*fdxv1.SubmitUpdateResponse, error) {
		return s.verdict(rej), nil
	}
	select {
	case rej := <-reply:
		return answer(rej)
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-s.done:
		// The verdict may have been given just before the shutdown (the
		// final round closes, then the server stops): a select between
		// the two would tell an accepted update it was not.
		select {
		case v := <-reply:
			return answer(v)
		default:
		}
		return nil, status.Error(codes.Unavailable, "aggregator shutting down")
	}
}

// store appends an update the round loop is about to fold to the update
// log, so that it survives a crash before the round commits. It runs in
// the round loop, before the fold and before the sender hears "accepted".
func (s *Server) store(u *fdxv1.Update) error {
	if s.wal == nil {
		return nil
	}
	if err := s.wal.append(u); err != nil {
		return err
	}
	if s.opt.AfterStore != nil {
		s.opt.AfterStore(u)
	}
	return nil
}

// refuse hands an update the transport refused (nil: one that never
// arrived whole) to the round loop, so that
// it is counted and logged like every other rejection, without holding the
// caller (who gets its gRPC status at once) or letting refused callers
// queue up in the loop: when the queue is full the refusal is only logged.
func (s *Server) refuse(u *fdxv1.Update, rej *rules.Rejection) {
	d := channel.Delivery{Key: u.GetClientId(), Rejection: rej}
	if u != nil {
		d.Update, d.Size = u, proto.Size(u)
	}
	select {
	case s.refusals <- d:
	default:
		s.opt.Logger.Warn("update refused (not counted: too many refusals queued)", "client_id", u.GetClientId(), "reason", rej.Reason)
	}
}

// checkClient enforces per-client bearer tokens on SubmitUpdate, where the
// client id is known.
func (s *Server) checkClient(ctx context.Context, clientID string) error {
	if len(s.opt.Tokens) == 0 {
		return nil
	}
	want, ok := s.opt.Tokens[clientID]
	if !ok || bearer(ctx) != want {
		return status.Errorf(codes.Unauthenticated, "client %q: missing or wrong bearer token", clientID)
	}
	return nil
}

// authUnary and authStream admit only callers holding one of the tokens.
// Health checks stay open so that load balancers and probes need no token.
func (s *Server) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := s.anyToken(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (s *Server) authStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := s.anyToken(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return h(srv, ss)
}

func (s *Server) anyToken(ctx context.Context, method string) error {
	if strings.HasPrefix(method, "/grpc.health.v1.Health/") {
		return nil
	}
	tok := bearer(ctx)
	for _, t := range s.opt.Tokens {
		if tok != "" && tok == t {
			return nil
		}
	}
	return status.Error(codes.Unauthenticated, "missing or unknown bearer token")
}

func bearer(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if len(v) > 7 && (v[:7] == "Bearer " || v[:7] == "bearer ") {
			return v[7:]
		}
	}
	return ""
}
