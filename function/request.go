package function

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/fdxkafka/fdxkafka/client/participant"
	"github.com/fdxkafka/fdxkafka/shared/rules"
)

// Limits on a request.
const (
	maxBodyBytes   = 64 << 10
	maxRounds      = 1000
	maxTimeout     = time.Hour
	defaultTimeout = 60 * time.Second
)

// Request is the function's JSON input: the PoC's {broker, client_id,
// channel} plus optional job, round, rounds and timeout_s.
type Request struct {
	Broker   string
	ClientID string
	Channel  string
	Job      string
	Round    int64
	Rounds   int
	Timeout  time.Duration
}

// Defaults fill fields a request leaves out (from the function's
// environment: FDX_BROKER, FDX_JOB, FDX_CHANNEL).
type Defaults struct {
	Broker  string
	Job     string
	Channel string
}

type rawRequest struct {
	Broker   *string         `json:"broker"`
	ClientID json.RawMessage `json:"client_id"`
	Channel  *string         `json:"channel"`
	Job      *string         `json:"job"`
	Round    *int64          `json:"round"`
	Rounds   *int            `json:"rounds"`
	TimeoutS *float64        `json:"timeout_s"`
}

// FieldError names the request field that is wrong.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// ParseRequest decodes and checks a request body. Unknown fields are errors,
// so a typo ("clientid") is reported rather than silently defaulted.
func ParseRequest(body io.Reader, def Defaults) (Request, error) {
	b, err := io.ReadAll(io.LimitReader(body, maxBodyBytes+1))
	if err != nil {
		return Request{}, &FieldError{"body", fmt.Sprintf("read: %v", err)}
	}
	if len(b) > maxBodyBytes {
		return Request{}, &FieldError{"body", fmt.Sprintf("over %d bytes", maxBodyBytes)}
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return Request{}, &FieldError{"body", "empty; want a JSON object"}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var raw rawRequest
	if err := dec.Decode(&raw); err != nil {
		return Request{}, jsonError(err)
	}
	if dec.More() {
		return Request{}, &FieldError{"body", "trailing data after the JSON object"}
	}
	req := Request{Broker: def.Broker, Job: def.Job, Channel: def.Channel, Rounds: 1, Timeout: defaultTimeout}
	if raw.Broker != nil {
		req.Broker = strings.TrimSpace(*raw.Broker)
	}
	if req.Broker == "" {
		return Request{}, &FieldError{"broker", "missing; want host:port of the Kafka broker or the gRPC aggregator"}
	}
	id, err := clientID(raw.ClientID)
	if err != nil {
		return Request{}, err
	}
	req.ClientID = id
	if raw.Channel != nil {
		req.Channel = strings.ToLower(strings.TrimSpace(*raw.Channel))
	}
	if req.Channel == "" {
		req.Channel = participant.ChannelKafka
	}
	if req.Channel != participant.ChannelKafka && req.Channel != participant.ChannelGRPC {
		return Request{}, &FieldError{"channel", fmt.Sprintf("%q is not a channel; want \"kafka\" or \"grpc\"", req.Channel)}
	}
	if raw.Job != nil {
		req.Job = *raw.Job
	}
	if req.Job == "" {
		req.Job = "mnist"
	}
	if err := rules.ValidateJob(req.Job); err != nil {
		return Request{}, &FieldError{"job", err.Error()}
	}
	if raw.Round != nil {
		if *raw.Round < 0 {
			return Request{}, &FieldError{"round", fmt.Sprintf("%d is negative", *raw.Round)}
		}
		req.Round = *raw.Round
	}
	if raw.Rounds != nil {
		if *raw.Rounds < 1 || *raw.Rounds > maxRounds {
			return Request{}, &FieldError{"rounds", fmt.Sprintf("%d; want 1 to %d", *raw.Rounds, maxRounds)}
		}
		req.Rounds = *raw.Rounds
	}
	if raw.TimeoutS != nil {
		t := *raw.TimeoutS
		if !(t > 0) || t > maxTimeout.Seconds() {
			return Request{}, &FieldError{"timeout_s", fmt.Sprintf("%v; want more than 0 and at most %v", t, maxTimeout.Seconds())}
		}
		req.Timeout = time.Duration(t * float64(time.Second))
		if req.Timeout <= 0 {
			return Request{}, &FieldError{"timeout_s", fmt.Sprintf("%v rounds to no time at all", t)}
		}
	}
	return req, nil
}

// clientID accepts a string or a non-negative integer, since the PoC's
// invokers sent numbers.
func clientID(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", &FieldError{"client_id", "missing"}
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		var n json.Number
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber()
		if d.Decode(&n) != nil {
			return "", &FieldError{"client_id", "want a string or an integer"}
		}
		k, err := strconv.ParseUint(n.String(), 10, 63)
		if err != nil {
			return "", &FieldError{"client_id", fmt.Sprintf("%s is not a non-negative integer", n)}
		}
		s = strconv.FormatUint(k, 10)
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return "", &FieldError{"client_id", "empty"}
	}
	if len(s) > rules.MaxClientIDLen {
		return "", &FieldError{"client_id", fmt.Sprintf("%d bytes; at most %d", len(s), rules.MaxClientIDLen)}
	}
	return s, nil
}

func jsonError(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return &FieldError{"body", fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, err)}
	case errors.As(err, &te) && te.Field == "":
		return &FieldError{"body", fmt.Sprintf("JSON %s; want an object", te.Value)}
	case errors.As(err, &te):
		return &FieldError{te.Field, fmt.Sprintf("want %v, got JSON %s", te.Type, te.Value)}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		if f == "" {
			f = "body"
		}
		return &FieldError{f, "unknown field; want broker, client_id, channel, job, round, rounds, timeout_s"}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &FieldError{"body", "truncated JSON"}
	}
	return &FieldError{"body", err.Error()}
}

// Target is the aggregator the request names, for participant.Transport.Dial.
func (r Request) Target() participant.Target {
	return participant.Target{Channel: r.Channel, Broker: r.Broker, Job: r.Job, ClientID: r.ClientID}
}

// RequestJSON builds a request body as the PoC's invokers sent it.
func RequestJSON(broker, clientID, channel, job string, timeoutS float64) io.Reader {
	b, _ := json.Marshal(map[string]any{"broker": broker, "client_id": clientID, "channel": channel, "job": job, "timeout_s": timeoutS})
	return bytes.NewReader(b)
}
