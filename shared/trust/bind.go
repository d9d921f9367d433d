package trust

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"strconv"
)

// Record headers that carry the fields a model signature binds, so that a
// reader can check the signature before it decodes the value (a manifest's
// value is not the model) and then refuse a value whose own fields differ.
const (
	// HeaderRound is the signed round, in decimal.
	HeaderRound = "fdx-round"
	// HeaderFinal is "1" on the signed final model, "0" otherwise.
	HeaderFinal = "fdx-final"
)

// ModelClaims are what a model signature binds besides the value: a
// genuine record replayed under another job, topic or round, or with its
// final flag flipped, does not verify.
type ModelClaims struct {
	Job   string
	Topic string
	Round int64
	Final bool
}

// modelDomain separates model signatures from anything else a key might
// sign; the version lets the format change without ambiguity.
const modelDomain = "fdx-model-v2"

// SigningInput is the message a model signature covers:
//
//	"fdx-model-v2" 0x00 job 0x00 topic 0x00 decimal(round) 0x00 ("1"|"0") 0x00 SHA-256(value)
//
// Job ids and topic names cannot hold a NUL byte, so the fields cannot be
// shifted into each other. Hashing the value first keeps the input small for
// a large model and lets every client language build it the same way.
func (c ModelClaims) SigningInput(value []byte) []byte {
	sum := sha256.Sum256(value)
	b := make([]byte, 0, len(modelDomain)+len(c.Job)+len(c.Topic)+24+len(sum)+5)
	b = append(b, modelDomain...)
	b = append(b, 0)
	b = append(b, c.Job...)
	b = append(b, 0)
	b = append(b, c.Topic...)
	b = append(b, 0)
	b = strconv.AppendInt(b, c.Round, 10)
	b = append(b, 0)
	b = append(b, finalFlag(c.Final)...)
	b = append(b, 0)
	return append(b, sum[:]...)
}

// Headers returns the header values of HeaderRound and HeaderFinal.
func (c ModelClaims) Headers() (round, final []byte) {
	return strconv.AppendInt(nil, c.Round, 10), []byte(finalFlag(c.Final))
}

// ParseClaims reads the round and final headers of a model record of job
// on topic.
func ParseClaims(job, topic string, round, final []byte) (ModelClaims, error) {
	r, err := strconv.ParseInt(string(round), 10, 64)
	if err != nil || r < 0 {
		return ModelClaims{}, fmt.Errorf("%w: round header %q", ErrBadSignature, round)
	}
	var f bool
	switch string(final) {
	case "1":
		f = true
	case "0":
	default:
		return ModelClaims{}, fmt.Errorf("%w: final header %q", ErrBadSignature, final)
	}
	return ModelClaims{Job: job, Topic: topic, Round: r, Final: f}, nil
}

func finalFlag(f bool) string {
	if f {
		return "1"
	}
	return "0"
}

// SignModel returns the signature binding claims to value.
func (s *Signer) SignModel(c ModelClaims, value []byte) []byte {
	return ed25519.Sign(s.key, c.SigningInput(value))
}

// VerifyModel checks sig, made by the key keyID names, over claims and
// value. The caller must still check that the decoded value says what the
// claims say (job, round, final).
func (v *Verifier) VerifyModel(c ModelClaims, value, sig []byte, keyID string) error {
	return v.Verify(c.SigningInput(value), sig, keyID)
}

// chunkDomain separates chunk MACs from update MACs under the same token.
const chunkDomain = "fdx-chunk-v1"

// ChunkMAC authenticates one chunk of a client's transfer:
//
//	HMAC-SHA256(token, "fdx-chunk-v1" 0x00 transferID 0x00 decimal(index) 0x00 SHA-256(value))
//
// A reader that checks it before a chunk may replace a transfer in progress
// cannot be made to drop a client's transfer by anyone without its token.
func ChunkMAC(token, transferID string, index int, value []byte) []byte {
	sum := sha256.Sum256(value)
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte(chunkDomain))
	m.Write([]byte{0})
	m.Write([]byte(transferID))
	m.Write([]byte{0})
	m.Write(strconv.AppendInt(nil, int64(index), 10))
	m.Write([]byte{0})
	m.Write(sum[:])
	return m.Sum(nil)
}

// CheckChunkMAC verifies a chunk's MAC in constant time.
func CheckChunkMAC(token, transferID string, index int, value, mac []byte) error {
	if len(mac) == 0 {
		return fmt.Errorf("%w: none on chunk %d of transfer %s", ErrBadMAC, index, transferID)
	}
	if !hmac.Equal(mac, ChunkMAC(token, transferID, index, value)) {
		return fmt.Errorf("%w: chunk %d of transfer %s does not verify", ErrBadMAC, index, transferID)
	}
	return nil
}
