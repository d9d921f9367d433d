package trust

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestModelSignatureBindsClaims(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	s := NewSigner(priv)
	v := NewVerifier(s.Public())
	value := []byte("serialized model")
	c := ModelClaims{Job: "j1", Topic: "fdx.j1.model", Round: 7, Final: false}
	sig := s.SignModel(c, value)
	if err := v.VerifyModel(c, value, sig, s.KeyID()); err != nil {
		t.Fatalf("genuine record: %v", err)
	}
	for name, other := range map[string]ModelClaims{
		"job":   {Job: "j2", Topic: c.Topic, Round: 7},
		"topic": {Job: "j1", Topic: "fdx.j1.partials", Round: 7},
		"round": {Job: "j1", Topic: c.Topic, Round: 2},
		"final": {Job: "j1", Topic: c.Topic, Round: 7, Final: true},
	} {
		if err := v.VerifyModel(other, value, sig, s.KeyID()); !errors.Is(err, ErrBadSignature) {
			t.Errorf("another %s verified: %v", name, err)
		}
	}
	if err := v.VerifyModel(c, []byte("serialized modeL"), sig, s.KeyID()); !errors.Is(err, ErrBadSignature) {
		t.Errorf("another value verified: %v", err)
	}
}

func TestParseClaims(t *testing.T) {
	c := ModelClaims{Job: "j", Topic: "fdx.j.model", Round: 12, Final: true}
	r, f := c.Headers()
	got, err := ParseClaims("j", "fdx.j.model", r, f)
	if err != nil || got != c {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for _, bad := range [][2]string{{"", "0"}, {"-1", "0"}, {"x", "0"}, {"3", ""}, {"3", "true"}} {
		if _, err := ParseClaims("j", "t", []byte(bad[0]), []byte(bad[1])); !errors.Is(err, ErrBadSignature) {
			t.Errorf("headers %q: err %v", bad, err)
		}
	}
}

func TestChunkMAC(t *testing.T) {
	mac := ChunkMAC("tok", "abc", 3, []byte("chunk"))
	if err := CheckChunkMAC("tok", "abc", 3, []byte("chunk"), mac); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"token":    CheckChunkMAC("tok2", "abc", 3, []byte("chunk"), mac),
		"transfer": CheckChunkMAC("tok", "abd", 3, []byte("chunk"), mac),
		"index":    CheckChunkMAC("tok", "abc", 4, []byte("chunk"), mac),
		"value":    CheckChunkMAC("tok", "abc", 3, []byte("chunK"), mac),
		"none":     CheckChunkMAC("tok", "abc", 3, []byte("chunk"), nil),
	} {
		if !errors.Is(err, ErrBadMAC) {
			t.Errorf("another %s: %v", name, err)
		}
	}
}

// vectors are the fixed cases other-language clients check themselves
// against (testdata/vectors.json, read by clients/python's tests).
type vectors struct {
	Seed         string `json:"ed25519_seed_hex"`
	PublicKeyPEM string `json:"public_key_pem"`
	KeyID        string `json:"key_id"`
	Models       []struct {
		Job, Topic   string
		Round        int64
		Final        bool
		ValueHex     string `json:"value_hex"`
		InputHex     string `json:"signing_input_hex"`
		SignatureHex string `json:"signature_hex"`
	} `json:"models"`
	Chunks []struct {
		Token      string `json:"token"`
		TransferID string `json:"transfer_id"`
		Index      int    `json:"index"`
		ValueHex   string `json:"value_hex"`
		MACHex     string `json:"mac_hex"`
	} `json:"chunks"`
	Updates []struct {
		Token    string `json:"token"`
		ValueHex string `json:"value_hex"`
		MACHex   string `json:"mac_hex"`
	} `json:"updates"`
}

// TestVectors recomputes every vector in testdata/vectors.json, so that the
// file other clients test against always says what this package does.
func TestVectors(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vs vectors
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	seed, _ := hex.DecodeString(vs.Seed)
	s := NewSigner(ed25519.NewKeyFromSeed(seed))
	if s.KeyID() != vs.KeyID {
		t.Errorf("key id %s, file says %s", s.KeyID(), vs.KeyID)
	}
	pub, err := ParsePublicKey([]byte(vs.PublicKeyPEM))
	if err != nil || !pub.Equal(s.Public()) {
		t.Errorf("public key PEM: %v", err)
	}
	if len(vs.Models) == 0 || len(vs.Chunks) == 0 || len(vs.Updates) == 0 {
		t.Fatal("vectors.json lacks cases")
	}
	for _, m := range vs.Models {
		value, _ := hex.DecodeString(m.ValueHex)
		c := ModelClaims{Job: m.Job, Topic: m.Topic, Round: m.Round, Final: m.Final}
		if got := hex.EncodeToString(c.SigningInput(value)); got != m.InputHex {
			t.Errorf("%+v: signing input %s, file says %s", c, got, m.InputHex)
		}
		if got := hex.EncodeToString(s.SignModel(c, value)); got != m.SignatureHex {
			t.Errorf("%+v: signature %s, file says %s", c, got, m.SignatureHex)
		}
	}
	for _, c := range vs.Chunks {
		value, _ := hex.DecodeString(c.ValueHex)
		if got := hex.EncodeToString(ChunkMAC(c.Token, c.TransferID, c.Index, value)); got != c.MACHex {
			t.Errorf("chunk %+v: MAC %s", c, got)
		}
	}
	for _, u := range vs.Updates {
		value, _ := hex.DecodeString(u.ValueHex)
		if got := hex.EncodeToString(MAC(u.Token, value)); got != u.MACHex {
			t.Errorf("update %+v: MAC %s", u, got)
		}
	}
}
