// Package function is FDxKafka's HTTP Cloud Function, and only that: the
// handler and its JSON request contract. One invocation is one client
// taking part in one or more rounds through package participant. POST it
//
//	{"broker": "10.0.0.5:9092", "client_id": "7", "channel": "kafka"}
//
// and it fetches the global model, trains on client 7's shard, sends the
// update and answers with a JSON summary. Importing the package registers
// the entry point "Handler" with functions-framework-go.
package function

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/GoogleCloudPlatform/functions-framework-go/functions"

	"github.com/fdxkafka/fdxkafka/client/dialcache"
	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/shared/channel"
	"github.com/fdxkafka/fdxkafka/shared/dataset"
	"github.com/fdxkafka/fdxkafka/shared/grpcchan"
	"github.com/fdxkafka/fdxkafka/shared/kafkachan"
	"github.com/fdxkafka/fdxkafka/shared/logging"
	"github.com/fdxkafka/fdxkafka/shared/trust"
)

// The Functions runtime calls a registered func; one process-wide Server is
// the only state, built on first use so that importing stays cheap.
var instance = sync.OnceValue(func() http.Handler {
	// On Cloud Run functions this is structured JSON on stdout with
	// severity, source location and the request's trace.
	log, err := logging.New(os.Stdout, logging.Options{Format: logging.Detect(), AddSource: true})
	if err != nil {
		log = slog.Default()
	}
	cfg, err := ConfigFromEnv(os.Getenv)
	if err != nil {
		// Misconfiguration shows on every invocation rather than as a
		// crash loop the operator has to dig out of the logs.
		log.Error("function configuration", "err", err)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusInternalServerError, errorResponse{Error: "function misconfigured: " + err.Error()})
		})
	}
	cfg.Logger = log
	// Warm instances reuse their channels: a Cloud Functions instance
	// serves invocation after invocation, and a dial costs two Kafka
	// clients and their connections.
	cfg.Cache = dialcache.New(dialcache.Options{MaxIdle: maxIdleChannels, Log: log})
	s := NewServer(cfg)
	return logging.HTTPMiddleware(WarnUnauthenticated(s, log), os.Getenv("GOOGLE_CLOUD_PROJECT"))
})

// maxIdleChannels bounds the channels a warm instance keeps: it serves
// few jobs, and each Kafka channel holds two Kafka clients.
const maxIdleChannels = 4

func init() {
	functions.HTTP("Handler", Handler)
}

// Handler is the Cloud Function entry point.
func Handler(w http.ResponseWriter, r *http.Request) { instance().ServeHTTP(w, r) }

// Config configures a Server.
type Config struct {
	Defaults Defaults
	Logger   *slog.Logger
	// Data caches the data sets across invocations of a warm instance;
	// nil makes a new catalog.
	Data *dataset.Catalog
	// Transport holds the security settings of every dial (Kafka SASL/TLS
	// properties, gRPC TLS and bearer token).
	Transport participant.Transport
	// Cache, when set, keeps channels warm between invocations: a warm
	// invocation skips the dial and the close. Nil dials per invocation.
	Cache *dialcache.Cache
	// AllowedBrokers are the addresses (host:port), besides those of
	// Defaults.Broker, that this deployment's credentials may be sent to.
	// When Transport holds credentials, a request naming any other
	// address is refused before a dial (see checkBroker); without
	// credentials a request may name any broker.
	AllowedBrokers []string
}

// ConfigFromEnv reads the function's deployment settings: FDX_BROKER,
// FDX_JOB, FDX_CHANNEL (request defaults), FDX_KAFKA_CONFIG (a Kafka
// properties file for SASL/TLS), FDX_GRPC_CA / FDX_GRPC_CERT / FDX_GRPC_KEY
// (TLS to the gRPC aggregator), FDX_CLIENT_TOKEN (the client's token: gRPC
// bearer token and Kafka update MAC key; FDX_GRPC_TOKEN is its older name)
// FDX_MODEL_PUBKEY (the aggregator's model-signing public key, PEM or
// a path to it) and FDX_ALLOWED_BROKERS (comma-separated host:port: where,
// besides FDX_BROKER, the credentials may be sent). A deployment with
// credentials and no broker to send them to is misconfigured.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	cfg := Config{Defaults: Defaults{Broker: getenv("FDX_BROKER"), Job: getenv("FDX_JOB"), Channel: getenv("FDX_CHANNEL")}}
	if f := getenv("FDX_KAFKA_CONFIG"); f != "" {
		props, err := kafkachan.LoadProperties(f)
		if err != nil {
			return cfg, fmt.Errorf("FDX_KAFKA_CONFIG: %w", err)
		}
		cfg.Transport.KafkaProperties = props
	}
	if ca, cert, key := getenv("FDX_GRPC_CA"), getenv("FDX_GRPC_CERT"), getenv("FDX_GRPC_KEY"); ca != "" || cert != "" {
		t, err := grpcchan.ClientTLS(ca, cert, key, "")
		if err != nil {
			return cfg, fmt.Errorf("FDX_GRPC_CA/CERT/KEY: %w", err)
		}
		cfg.Transport.GRPCTLS = t
	}
	// One token serves both channels (gRPC bearer, Kafka update MAC);
	// FDX_GRPC_TOKEN is its older name.
	cfg.Transport.Token = cmp.Or(getenv("FDX_CLIENT_TOKEN"), getenv("FDX_GRPC_TOKEN"))
	if k := getenv("FDX_MODEL_PUBKEY"); k != "" {
		v, err := trust.VerifierFrom(k)
		if err != nil {
			return cfg, fmt.Errorf("FDX_MODEL_PUBKEY: %w", err)
		}
		cfg.Transport.ModelVerifier = v
	}
	for _, a := range strings.Split(getenv("FDX_ALLOWED_BROKERS"), ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.AllowedBrokers = append(cfg.AllowedBrokers, a)
		}
	}
	if _, err := newBrokerPolicy(cfg.Transport, cfg.Defaults.Broker, cfg.AllowedBrokers); err != nil {
		return cfg, fmt.Errorf("FDX_BROKER/FDX_ALLOWED_BROKERS: %w", err)
	}
	return cfg, nil
}

// Server handles invocations.
type Server struct {
	cfg  Config
	part *participant.Participant
	log  *slog.Logger
	// brokers is the allow-list; brokersErr, when set, refuses every
	// request (credentials and nowhere to send them).
	brokers    brokerPolicy
	brokersErr error
}

// NewServer returns a Server.
func NewServer(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Transport.Logger == nil {
		cfg.Transport.Logger = cfg.Logger
	}
	if cfg.Data == nil {
		cfg.Data = dataset.NewCatalog()
	}
	s := &Server{cfg: cfg, part: &participant.Participant{Data: cfg.Data, Log: cfg.Logger}, log: cfg.Logger}
	s.brokers, s.brokersErr = newBrokerPolicy(cfg.Transport, cfg.Defaults.Broker, cfg.AllowedBrokers)
	if s.brokersErr != nil {
		s.brokers.guard = true // fail closed
		s.log.Error("function configuration: every request will be refused", "err", s.brokersErr)
	}
	return s
}

// checkBroker refuses a request whose broker the deployment's credentials
// may not go to; it runs before any dial, cached channels included.
func (s *Server) checkBroker(req Request) error {
	if s.brokersErr != nil {
		return fmt.Errorf("%w: %w", ErrBrokerNotAllowed, s.brokersErr)
	}
	return s.brokers.check(req.Broker)
}

// Response is the JSON answer of a successful invocation.
type Response struct {
	participant.Summary
	Channel string `json:"channel"`
	// Warm is true when the invocation reused a channel an earlier one on
	// this instance dialed.
	Warm bool `json:"warm"`
}

type errorResponse struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, errorResponse{Error: "method " + r.Method + " not allowed; POST a JSON request"})
		return
	}
	req, err := ParseRequest(r.Body, s.cfg.Defaults)
	if err != nil {
		var fe *FieldError
		resp := errorResponse{Error: err.Error()}
		if errors.As(err, &fe) {
			resp.Field = fe.Field
		}
		s.log.WarnContext(r.Context(), "bad request", "err", err)
		writeJSON(w, http.StatusBadRequest, resp)
		return
	}
	if err := s.checkBroker(req); err != nil {
		s.log.WarnContext(r.Context(), "request refused: broker not allowed", "broker", req.Broker, "client_id", req.ClientID, "err", err)
		writeJSON(w, http.StatusForbidden, errorResponse{Error: err.Error(), Field: "broker"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), req.Timeout)
	defer cancel()
	sum, warm, done, err := s.run(ctx, req)
	// Closing (or returning to the cache) a channel waits on the Kafka client;
	// the caller need not: it has the whole answer once it is flushed.
	defer done(err)
	if err != nil {
		code := statusFor(err)
		s.log.ErrorContext(ctx, "invocation failed", "client_id", req.ClientID, "channel", req.Channel, "status", code, "err", err)
		writeJSON(w, code, errorResponse{Error: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, Response{Summary: sum, Channel: req.Channel, Warm: warm})
	if err := http.NewResponseController(w).Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		s.log.WarnContext(ctx, "flush answer", "err", err)
	}
}

// Run dials the request's channel and takes part in its rounds.
func (s *Server) Run(ctx context.Context, req Request) (participant.Summary, error) {
	sum, _, done, err := s.run(ctx, req)
	done(err)
	return sum, err
}

// run takes part in the request's rounds on a channel from the cache (or
// a fresh one), and returns the func that gives it back: to be called once
// the answer is written.
func (s *Server) run(ctx context.Context, req Request) (sum participant.Summary, warm bool, done func(error), err error) {
	if err := s.checkBroker(req); err != nil {
		return participant.Summary{}, false, func(error) {}, err
	}
	dial := func(ctx context.Context) (channel.Client, error) { return s.cfg.Transport.Dial(ctx, req.Target()) }
	var ch channel.Client
	done = func(error) {}
	if s.cfg.Cache != nil {
		ch, done, warm, err = s.cfg.Cache.Get(ctx, s.cacheKey(req), dial)
	} else {
		ch, err = dial(ctx)
		done = func(error) { ch.Close() }
	}
	if err != nil {
		return participant.Summary{}, false, func(error) {}, err
	}
	// A cached client's counters run across invocations; the summary
	// reports this one's (a cold one's includes its dial).
	leased := sinceLease{Client: ch}
	if warm {
		leased.base = ch.Stats()
	}
	sum, err = s.part.Run(ctx, leased, participant.Options{Job: req.Job, ClientID: req.ClientID, Round: req.Round, Exact: req.Round > 0, Rounds: req.Rounds})
	return sum, warm, done, err
}

// cacheKey says which cached channels can serve req: same channel, broker,
// job and identity (Kafka properties, token; on gRPC the client id, which
// the connection is made for).
func (s *Server) cacheKey(req Request) dialcache.Key {
	extra := []string{s.cfg.Transport.Token}
	if req.Channel == participant.ChannelGRPC {
		extra = append(extra, req.ClientID)
	}
	return dialcache.Key{Channel: req.Channel, Broker: req.Broker, Job: req.Job,
		Security: dialcache.Digest(s.cfg.Transport.KafkaProperties, extra...)}
}

// sinceLease reports a client's traffic since it was leased.
type sinceLease struct {
	channel.Client
	base channel.Stats
}

func (c sinceLease) Stats() channel.Stats {
	st := c.Client.Stats()
	return channel.Stats{
		MessagesSent:     st.MessagesSent - c.base.MessagesSent,
		MessagesReceived: st.MessagesReceived - c.base.MessagesReceived,
		BytesSent:        st.BytesSent - c.base.BytesSent,
		BytesReceived:    st.BytesReceived - c.base.BytesReceived,
		RecordsRejected:  st.RecordsRejected - c.base.RecordsRejected,
	}
}

// statusFor maps a failure onto an HTTP status an invoker can act on:
// 502/504 are worth retrying, 409 means the round moved on.
func statusFor(err error) int {
	switch {
	case errors.Is(err, ErrBrokerNotAllowed):
		return http.StatusForbidden
	case errors.Is(err, participant.ErrRoundClosed):
		return http.StatusConflict
	case errors.Is(err, channel.ErrRejected):
		return http.StatusUnprocessableEntity
	case errors.Is(err, channel.ErrJobNotFound):
		return http.StatusNotFound
	case errors.Is(err, channel.ErrUnauthenticated):
		return http.StatusForbidden
	case errors.Is(err, channel.ErrUnreachable):
		return http.StatusBadGateway
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(fmt.Sprintf(`{"error":%q}`, err.Error()))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}
