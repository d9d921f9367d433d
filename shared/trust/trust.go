// Package trust lets each side verify what it reads from a broker anyone
// may write to. The aggregator signs every global model with Ed25519 and
// clients verify it with the aggregator's public key, so a forged model
// (a "final" one that ends every client, or chosen weights) is ignored.
// Clients authenticate their updates with an HMAC-SHA256 keyed by their
// own token (the same tokens file the gRPC channel uses), so nobody can
// submit under another client's id. Both travel in Kafka record headers
// over the record's value, which is the exact serialized message.
package trust

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Kafka record header keys.
const (
	// HeaderSignature carries the Ed25519 signature over a model record's
	// value.
	HeaderSignature = "fdx-sig"
	// HeaderKeyID names the key that signed it, so that keys can rotate.
	HeaderKeyID = "fdx-key-id"
	// HeaderMAC carries an update's HMAC-SHA256 over the record's value,
	// keyed by its client's token.
	HeaderMAC = "fdx-mac"
)

// Errors a verification wraps.
var (
	// ErrUnsigned: the record carries no signature.
	ErrUnsigned = errors.New("unsigned")
	// ErrBadSignature: the signature does not verify, or names an unknown key.
	ErrBadSignature = errors.New("bad signature")
	// ErrBadMAC: the update's MAC is missing or does not verify for its client.
	ErrBadMAC = errors.New("bad MAC")
)

// KeyID is the id of a public key: the first 8 bytes of its SHA-256, in hex.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// Signer signs model records.
type Signer struct {
	key ed25519.PrivateKey
	id  string
}

// NewSigner returns a signer for key.
func NewSigner(key ed25519.PrivateKey) *Signer {
	return &Signer{key: key, id: KeyID(key.Public().(ed25519.PublicKey))}
}

// KeyID is the id of the signer's key.
func (s *Signer) KeyID() string { return s.id }

// Public returns the public key clients verify with.
func (s *Signer) Public() ed25519.PublicKey { return s.key.Public().(ed25519.PublicKey) }

// Sign returns the signature over value.
func (s *Signer) Sign(value []byte) []byte { return ed25519.Sign(s.key, value) }

// DeriveKey returns a 32-byte secret for purpose that only holders of the
// signing key can compute: HMAC-SHA256 keyed by the key's seed over
// "fdx-derive-v1" 0x00 purpose. Processes that already share the model
// key (the scale-out leader and its workers) authenticate each other's
// records with it, without a second secret to distribute and rotate. The
// label keeps it apart from every signature, and different purposes give
// independent keys.
func (s *Signer) DeriveKey(purpose string) []byte {
	m := hmac.New(sha256.New, s.key.Seed())
	m.Write([]byte("fdx-derive-v1\x00"))
	m.Write([]byte(purpose))
	return m.Sum(nil)
}

// Verifier checks model records against one or more public keys.
type Verifier struct {
	keys map[string]ed25519.PublicKey
}

// NewVerifier trusts the given public keys.
func NewVerifier(keys ...ed25519.PublicKey) *Verifier {
	v := &Verifier{keys: map[string]ed25519.PublicKey{}}
	for _, k := range keys {
		v.keys[KeyID(k)] = k
	}
	return v
}

// Verify checks sig, made by the key keyID names, over value.
func (v *Verifier) Verify(value, sig []byte, keyID string) error {
	if len(sig) == 0 {
		return ErrUnsigned
	}
	k, ok := v.keys[keyID]
	if !ok {
		return fmt.Errorf("%w: unknown key id %q", ErrBadSignature, keyID)
	}
	if !ed25519.Verify(k, value, sig) {
		return fmt.Errorf("%w: signature of key %s does not match the record", ErrBadSignature, keyID)
	}
	return nil
}

// MAC returns the HMAC-SHA256 of value keyed by token.
func MAC(token string, value []byte) []byte {
	m := hmac.New(sha256.New, []byte(token))
	m.Write(value)
	return m.Sum(nil)
}

// CheckMAC verifies mac over value for token, in constant time.
func CheckMAC(token string, value, mac []byte) error {
	if len(mac) == 0 {
		return fmt.Errorf("%w: none", ErrBadMAC)
	}
	if !hmac.Equal(mac, MAC(token, value)) {
		return fmt.Errorf("%w: does not verify", ErrBadMAC)
	}
	return nil
}

// GenerateKey writes a new Ed25519 key pair as PEM files: the private key
// (PKCS #8, mode 0600) to privPath and the public key (PKIX) to pubPath.
func GenerateKey(privPath, pubPath string) error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return err
	}
	if err := os.WriteFile(privPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	pder, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return err
	}
	return os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder}), 0o644)
}

// LoadSigner reads a PEM PKCS #8 Ed25519 private key.
func LoadSigner(path string) (*Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("model signing key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("model signing key %s: want a PEM \"PRIVATE KEY\" block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("model signing key %s: %w", path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("model signing key %s: a %T, want Ed25519", path, k)
	}
	return NewSigner(ek), nil
}

// ParsePublicKey reads a PEM PKIX Ed25519 public key.
func ParsePublicKey(pemBytes []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(pemBytes)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("want a PEM \"PUBLIC KEY\" block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("a %T, want Ed25519", k)
	}
	return ek, nil
}

// LoadVerifier reads a PEM Ed25519 public key file (several PEM blocks
// trust several keys, for rotation).
func LoadVerifier(path string) (*Verifier, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("model public key: %w", err)
	}
	v, err := ParseVerifier(b)
	if err != nil {
		return nil, fmt.Errorf("model public key %s: %w", path, err)
	}
	return v, nil
}

// VerifierFrom reads a verifier from where a deployment puts it: inline
// PEM (an environment variable set from a secret) or the path of a PEM
// file (a mounted secret).
func VerifierFrom(pemOrPath string) (*Verifier, error) {
	if strings.HasPrefix(strings.TrimSpace(pemOrPath), "-----BEGIN") {
		return ParseVerifier([]byte(pemOrPath))
	}
	return LoadVerifier(pemOrPath)
}

// ParseVerifier trusts the Ed25519 public keys of the PEM blocks in b.
func ParseVerifier(b []byte) (*Verifier, error) {
	var keys []ed25519.PublicKey
	for len(b) > 0 {
		blk, rest := pem.Decode(b)
		if blk == nil {
			break
		}
		k, err := ParsePublicKey(pem.EncodeToMemory(blk))
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
		b = rest
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM \"PUBLIC KEY\" block")
	}
	return NewVerifier(keys...), nil
}
