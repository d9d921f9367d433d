package kafkachan

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// Kafka properties. Operators keep passing the settings they know from
// other Kafka clients in a properties file (--kafka-config, the function's
// FDX_KAFKA_CONFIG); kafkachan maps each key it knows onto franz-go options
// and refuses any other key by name, so that a typo or a setting of another
// client is not silently ignored.
//
//	bootstrap.servers                      replaces the brokers given on the command line
//	security.protocol                      PLAINTEXT (default), SSL, SASL_PLAINTEXT, SASL_SSL
//	sasl.mechanism (or sasl.mechanisms)    PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
//	sasl.username, sasl.password
//	ssl.ca.location                        PEM file of the CAs that sign the brokers' certificates
//	ssl.certificate.location               PEM file of the client certificate (mutual TLS)
//	ssl.key.location                       PEM file of its unencrypted private key
//	ssl.ca.pem, ssl.certificate.pem,       the same PEM inline, for deployments that mount one
//	ssl.key.pem                            secret file (newlines may be written as spaces)
//	ssl.endpoint.identification.algorithm  https (default: the broker's certificate must name
//	                                       the host dialed) or none
//	client.id                              the client id brokers log and quota by
//
// Tuning:
//
//	socket.connection.setup.timeout.ms     bound on one broker dial (default 10000)
//	metadata.max.age.ms                    how often metadata is refreshed (default 300000)
//	session.timeout.ms                     the aggregator's group session (default 10000)
//	heartbeat.interval.ms                  its group heartbeat (default 1000)
//	log.level                              the Kafka client's lines that reach the log:
//	                                       error, warn (default), info, debug or none

// properties is a parsed properties map.
type properties struct {
	brokers  string
	logLevel kgo.LogLevel
	// opts are the kgo options the security and tuning keys map to.
	opts []kgo.Opt
	// sessionTimeout and heartbeat are the group settings (0: default).
	sessionTimeout, heartbeat time.Duration
}

// knownProperties lists every key parseProperties takes.
var knownProperties = []string{
	"bootstrap.servers", "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password",
	"ssl.ca.location", "ssl.certificate.location", "ssl.key.location", "ssl.ca.pem", "ssl.certificate.pem", "ssl.key.pem",
	"ssl.endpoint.identification.algorithm", "client.id",
	"socket.connection.setup.timeout.ms", "metadata.max.age.ms", "session.timeout.ms", "heartbeat.interval.ms", "log.level",
}

// parseProperties maps props onto kgo options. Errors name the key, never
// its value, which may be secret.
func parseProperties(props map[string]string) (*properties, error) {
	for k := range props {
		if !slices.Contains(knownProperties, k) {
			return nil, fmt.Errorf("kafka property %q is not supported (supported: %s)", k, strings.Join(knownProperties, ", "))
		}
	}
	out := &properties{brokers: props["bootstrap.servers"], logLevel: kgo.LogLevelWarn}
	if v, ok := props["log.level"]; ok {
		lvl, ok := map[string]kgo.LogLevel{"error": kgo.LogLevelError, "warn": kgo.LogLevelWarn, "info": kgo.LogLevelInfo,
			"debug": kgo.LogLevelDebug, "none": kgo.LogLevelNone}[strings.ToLower(v)]
		if !ok {
			return nil, fmt.Errorf("kafka property log.level: want error, warn, info, debug or none")
		}
		out.logLevel = lvl
	}
	if v := props["client.id"]; v != "" {
		out.opts = append(out.opts, kgo.ClientID(v))
	}
	for key, set := range map[string]func(time.Duration){
		"socket.connection.setup.timeout.ms": func(d time.Duration) { out.opts = append(out.opts, kgo.DialTimeout(d)) },
		"metadata.max.age.ms":                func(d time.Duration) { out.opts = append(out.opts, kgo.MetadataMaxAge(d)) },
		"session.timeout.ms":                 func(d time.Duration) { out.sessionTimeout = d },
		"heartbeat.interval.ms":              func(d time.Duration) { out.heartbeat = d },
	} {
		v, ok := props[key]
		if !ok {
			continue
		}
		ms, err := strconv.Atoi(v)
		if err != nil || ms <= 0 {
			return nil, fmt.Errorf("kafka property %s: want a positive number of milliseconds", key)
		}
		set(time.Duration(ms) * time.Millisecond)
	}

	proto := strings.ToUpper(props["security.protocol"])
	if proto == "" {
		proto = "PLAINTEXT"
	}
	var useTLS, useSASL bool
	switch proto {
	case "PLAINTEXT":
	case "SSL":
		useTLS = true
	case "SASL_PLAINTEXT":
		useSASL = true
	case "SASL_SSL":
		useTLS, useSASL = true, true
	default:
		return nil, fmt.Errorf("kafka property security.protocol: want PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
	}
	if useTLS {
		cfg, err := tlsConfig(props)
		if err != nil {
			return nil, err
		}
		out.opts = append(out.opts, kgo.DialTLSConfig(cfg))
	} else {
		for _, k := range []string{"ssl.ca.location", "ssl.certificate.location", "ssl.key.location", "ssl.ca.pem", "ssl.certificate.pem", "ssl.key.pem"} {
			if props[k] != "" {
				return nil, fmt.Errorf("kafka property %s is set but security.protocol %s does not use TLS", k, proto)
			}
		}
	}
	if useSASL {
		m, err := saslMechanism(props)
		if err != nil {
			return nil, err
		}
		out.opts = append(out.opts, kgo.SASL(m))
	} else if props["sasl.username"] != "" {
		return nil, fmt.Errorf("kafka property sasl.username is set but security.protocol %s does not use SASL", proto)
	}
	return out, nil
}

// saslMechanism is the SASL mechanism the properties name.
func saslMechanism(props map[string]string) (sasl.Mechanism, error) {
	mech := props["sasl.mechanism"]
	if alt := props["sasl.mechanisms"]; mech == "" {
		mech = alt // the name librdkafka uses, as kafka.sh's secrets files do
	} else if alt != "" && !strings.EqualFold(alt, mech) {
		return nil, errors.New("kafka properties sasl.mechanism and sasl.mechanisms disagree")
	}
	user, pass := props["sasl.username"], props["sasl.password"]
	if user == "" || pass == "" {
		return nil, errors.New("kafka properties: SASL needs sasl.username and sasl.password")
	}
	switch strings.ToUpper(mech) {
	case "PLAIN", "":
		return plain.Auth{User: user, Pass: pass}.AsMechanism(), nil
	case "SCRAM-SHA-256":
		return scram.Auth{User: user, Pass: pass}.AsSha256Mechanism(), nil
	case "SCRAM-SHA-512":
		return scram.Auth{User: user, Pass: pass}.AsSha512Mechanism(), nil
	}
	return nil, errors.New("kafka property sasl.mechanism: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
}

// tlsConfig builds the TLS settings: the CAs (the system's when none is
// given), the client certificate, and host name verification.
func tlsConfig(props map[string]string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	ca, err := pemProperty(props, "ssl.ca.location", "ssl.ca.pem")
	if err != nil {
		return nil, err
	}
	if ca != nil {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			return nil, errors.New("kafka property ssl.ca: no PEM certificate in it")
		}
		cfg.RootCAs = pool
	}
	cert, err := pemProperty(props, "ssl.certificate.location", "ssl.certificate.pem")
	if err != nil {
		return nil, err
	}
	key, err := pemProperty(props, "ssl.key.location", "ssl.key.pem")
	if err != nil {
		return nil, err
	}
	switch {
	case cert != nil && key != nil:
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("kafka properties ssl.certificate and ssl.key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	case cert != nil || key != nil:
		return nil, errors.New("kafka properties: a client certificate needs both ssl.certificate and ssl.key")
	}
	switch strings.ToLower(props["ssl.endpoint.identification.algorithm"]) {
	case "", "https":
		// kgo sets ServerName to the host dialed, so the standard
		// verification checks the certificate names it.
	case "none":
		// Verify the chain but not the name: what librdkafka's "none"
		// does, for brokers whose certificates name another host.
		cfg.InsecureSkipVerify = true
		roots := cfg.RootCAs
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("broker sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
			return err
		}
	default:
		return nil, errors.New("kafka property ssl.endpoint.identification.algorithm: want https or none")
	}
	return cfg, nil
}

// pemBlock finds a PEM block written on one line (its newlines turned to
// spaces, as a one-line property value has them).
var pemBlock = regexp.MustCompile(`-----BEGIN ([A-Z0-9 ]+)-----([A-Za-z0-9+/=\s\\n]*)-----END ([A-Z0-9 ]+)-----`)

// pemProperty returns the PEM of fileKey's file or of inlineKey's value
// (nil when neither is set).
func pemProperty(props map[string]string, fileKey, inlineKey string) ([]byte, error) {
	path, inline := props[fileKey], props[inlineKey]
	switch {
	case path != "" && inline != "":
		return nil, fmt.Errorf("kafka properties %s and %s: set one of them", fileKey, inlineKey)
	case path != "":
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("kafka property %s: %w", fileKey, err)
		}
		return b, nil
	case inline != "":
		var out []byte
		for _, m := range pemBlock.FindAllStringSubmatch(inline, -1) {
			body := strings.NewReplacer(`\n`, "", " ", "", "\t", "").Replace(m[2])
			var b strings.Builder
			for len(body) > 64 {
				b.WriteString(body[:64] + "\n")
				body = body[64:]
			}
			b.WriteString(body)
			out = fmt.Appendf(out, "-----BEGIN %s-----\n%s\n-----END %s-----\n", m[1], b.String(), m[3])
		}
		if blk, _ := pem.Decode(out); blk == nil {
			return nil, fmt.Errorf("kafka property %s: no PEM block in it", inlineKey)
		}
		return out, nil
	}
	return nil, nil
}

// keyPartitioner places a record on its Partition when that is set (>= 0:
// model chunks, partials) and otherwise by its key, the way librdkafka's
// default partitioner ("consistent_random") does: CRC-32 of the key modulo
// the partition count, a random partition for a record without a key. The
// aggregator does not depend on where a key lands, but a client id's
// records keep landing where earlier versions of this client and other
// librdkafka-based clients put them, and all of one client's records
// (an update's chunks and manifest) land on one partition, in order.
func keyPartitioner() kgo.Partitioner {
	return kgo.BasicConsistentPartitioner(func(string) func(*kgo.Record, int) int {
		return func(r *kgo.Record, n int) int {
			switch {
			case r.Partition >= 0:
				return int(r.Partition)
			case len(r.Key) == 0:
				return rand.IntN(n)
			}
			return int(crc32.ChecksumIEEE(r.Key) % uint32(n))
		}
	})
}

// byKey is the Partition of a record that keyPartitioner places by key.
const byKey = -1

// logAdapter sends franz-go's log lines to slog, so that nothing of the
// Kafka client reaches stderr outside the process's own logger.
type logAdapter struct {
	log   *slog.Logger
	level kgo.LogLevel
}

func newLogAdapter(log *slog.Logger, level kgo.LogLevel) *logAdapter {
	return &logAdapter{log: log.With("component", "kafka-client"), level: level}
}

func (a *logAdapter) Level() kgo.LogLevel { return a.level }

func (a *logAdapter) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lvl := slog.LevelDebug
	switch level {
	case kgo.LogLevelError:
		lvl = slog.LevelError
	case kgo.LogLevelWarn:
		lvl = slog.LevelWarn
	case kgo.LogLevelInfo:
		lvl = slog.LevelInfo
	}
	a.log.Log(context.Background(), lvl, msg, keyvals...)
}
