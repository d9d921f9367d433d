package trust

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"path/filepath"
	"testing"
)

func TestSignVerify(t *testing.T) {
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "key.pem"), filepath.Join(dir, "key.pub")
	if err := GenerateKey(priv, pub); err != nil {
		t.Fatal(err)
	}
	s, err := LoadSigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	v, err := LoadVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	value := []byte("model round 3")
	sig := s.Sign(value)
	if err := v.Verify(value, sig, s.KeyID()); err != nil {
		t.Fatalf("genuine record: %v", err)
	}
	if err := v.Verify([]byte("model round 4"), sig, s.KeyID()); !errors.Is(err, ErrBadSignature) {
		t.Errorf("changed value: %v, want ErrBadSignature", err)
	}
	if err := v.Verify(value, nil, ""); !errors.Is(err, ErrUnsigned) {
		t.Errorf("no signature: %v, want ErrUnsigned", err)
	}
	if err := v.Verify(value, sig, "0011223344556677"); !errors.Is(err, ErrBadSignature) {
		t.Errorf("unknown key: %v, want ErrBadSignature", err)
	}
	// A forger with their own key gets nowhere.
	if err := GenerateKey(filepath.Join(dir, "evil.pem"), filepath.Join(dir, "evil.pub")); err != nil {
		t.Fatal(err)
	}
	evil, err := LoadSigner(filepath.Join(dir, "evil.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(value, evil.Sign(value), evil.KeyID()); !errors.Is(err, ErrBadSignature) {
		t.Errorf("forger's key: %v, want ErrBadSignature", err)
	}
	if err := v.Verify(value, evil.Sign(value), s.KeyID()); !errors.Is(err, ErrBadSignature) {
		t.Errorf("forger's signature under the real key id: %v, want ErrBadSignature", err)
	}
	if _, err := LoadSigner(pub); err == nil {
		t.Error("LoadSigner(public key file) succeeded")
	}
	if _, err := LoadVerifier(priv); err == nil {
		t.Error("LoadVerifier(private key file) succeeded")
	}
}

func TestMAC(t *testing.T) {
	value := []byte("update of client 3")
	mac := MAC("tok-3", value)
	if err := CheckMAC("tok-3", value, mac); err != nil {
		t.Fatalf("genuine MAC: %v", err)
	}
	for name, err := range map[string]error{
		"other token":   CheckMAC("tok-4", value, mac),
		"changed value": CheckMAC("tok-3", []byte("update of client 4"), mac),
		"no MAC":        CheckMAC("tok-3", value, nil),
	} {
		if !errors.Is(err, ErrBadMAC) {
			t.Errorf("%s: %v, want ErrBadMAC", name, err)
		}
	}
}

// TestDeriveKey checks that a derived key is fixed by the signing key and
// the purpose, and differs across either: the fixed vector pins the
// construction (HMAC-SHA256 over the seed) for other implementations.
func TestDeriveKey(t *testing.T) {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i)
	}
	s := NewSigner(ed25519.NewKeyFromSeed(seed))
	m := hmac.New(sha256.New, seed)
	m.Write([]byte("fdx-derive-v1\x00partials"))
	if got, want := s.DeriveKey("partials"), m.Sum(nil); !bytes.Equal(got, want) {
		t.Fatalf("DeriveKey = %x, want %x", got, want)
	}
	if bytes.Equal(s.DeriveKey("a"), s.DeriveKey("b")) {
		t.Error("two purposes give the same key")
	}
	seed[0] ^= 1
	if bytes.Equal(NewSigner(ed25519.NewKeyFromSeed(seed)).DeriveKey("a"), s.DeriveKey("a")) {
		t.Error("two signing keys give the same key")
	}
}
