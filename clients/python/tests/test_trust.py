"""Signatures and MACs against the Go side's fixed vectors
(shared/trust/testdata/vectors.json), and the verifier's rules."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import REPO
from fdxkafka import trust

VECTORS = json.loads((REPO / "shared" / "trust" / "testdata" / "vectors.json").read_text())
KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["ed25519_seed_hex"]))


def headers(sig: bytes, kid: str, round_: int | None, final: bool | None) -> dict[str, bytes]:
    h = {trust.HEADER_SIGNATURE: sig, trust.HEADER_KEY_ID: kid.encode()}
    if round_ is not None:
        h[trust.HEADER_ROUND] = str(round_).encode()
    if final is not None:
        h[trust.HEADER_FINAL] = b"1" if final else b"0"
    return h


def test_key_id() -> None:
    v = trust.Verifier.from_pem(VECTORS["public_key_pem"])
    assert trust.key_id(KEY.public_key()) == VECTORS["key_id"]
    assert list(v._keys) == [VECTORS["key_id"]]


@pytest.mark.parametrize("vec", VECTORS["models"], ids=lambda v: v["job"])
def test_model_vectors(vec: dict) -> None:
    v = trust.Verifier.from_pem(VECTORS["public_key_pem"])
    claims = trust.ModelClaims(vec["job"], vec["topic"], vec["round"], vec["final"])
    value = bytes.fromhex(vec["value_hex"])
    sig = bytes.fromhex(vec["signature_hex"])
    assert claims.signing_input(value).hex() == vec["signing_input_hex"]
    assert KEY.sign(claims.signing_input(value)).hex() == vec["signature_hex"]  # Ed25519 is deterministic
    got = v.verify_record(vec["job"], vec["topic"], value, headers(sig, VECTORS["key_id"], vec["round"], vec["final"]))
    assert got == claims
    # Each bound field, changed, fails.
    for job, topic, r, f, val in [
        (vec["job"] + "x", vec["topic"], vec["round"], vec["final"], value),
        (vec["job"], vec["topic"] + "x", vec["round"], vec["final"], value),
        (vec["job"], vec["topic"], vec["round"] + 1, vec["final"], value),
        (vec["job"], vec["topic"], vec["round"], not vec["final"], value),
        (vec["job"], vec["topic"], vec["round"], vec["final"], value + b"\x00"),
    ]:
        with pytest.raises(trust.VerificationError, match="bad signature"):
            v.verify_record(job, topic, val, headers(sig, VECTORS["key_id"], r, f))


def test_update_and_chunk_macs() -> None:
    for u in VECTORS["updates"]:
        assert trust.mac(u["token"], bytes.fromhex(u["value_hex"])).hex() == u["mac_hex"]
    for c in VECTORS["chunks"]:
        got = trust.chunk_mac(c["token"], c["transfer_id"], c["index"], bytes.fromhex(c["value_hex"]))
        assert got.hex() == c["mac_hex"]
        assert trust.chunk_mac(c["token"], c["transfer_id"], c["index"] + 1, bytes.fromhex(c["value_hex"])) != got


def test_value_only_signatures() -> None:
    """A value-only signature counts only when allowed and only on a record
    without fdx-round/fdx-final: a record that has them is held to the
    binding, so the headers cannot be used to downgrade."""
    vec = VECTORS["models"][0]
    value = bytes.fromhex(vec["value_hex"])
    value_sig = KEY.sign(value)
    kid = VECTORS["key_id"]
    strict = trust.Verifier.from_pem(VECTORS["public_key_pem"])
    lenient = trust.Verifier.from_pem(VECTORS["public_key_pem"], allow_value_only=True)
    with pytest.raises(trust.VerificationError, match="value-only"):
        strict.verify_record(vec["job"], vec["topic"], value, headers(value_sig, kid, None, None))
    assert lenient.verify_record(vec["job"], vec["topic"], value, headers(value_sig, kid, None, None)) is None
    with pytest.raises(trust.VerificationError, match="bad signature"):
        lenient.verify_record(vec["job"], vec["topic"], value, headers(value_sig, kid, vec["round"], vec["final"]))
    with pytest.raises(trust.VerificationError, match="final header"):
        lenient.verify_record(vec["job"], vec["topic"], value, headers(value_sig, kid, vec["round"], None))
    with pytest.raises(trust.VerificationError, match="bad signature"):
        lenient.verify_record(vec["job"], vec["topic"], value + b"x", headers(value_sig, kid, None, None))


@pytest.mark.parametrize("h,match", [
    ({trust.HEADER_ROUND: b"-1", trust.HEADER_FINAL: b"0"}, "round header"),
    ({trust.HEADER_ROUND: b"1", trust.HEADER_FINAL: b"yes"}, "final header"),
    ({trust.HEADER_ROUND: b"\xd9\xa1", trust.HEADER_FINAL: b"0"}, "round header"),
    ({trust.HEADER_ROUND: b"1", trust.HEADER_FINAL: b"0"}, "unsigned"),
    ({trust.HEADER_ROUND: b"1", trust.HEADER_FINAL: b"0", trust.HEADER_SIGNATURE: b"x" * 64,
      trust.HEADER_KEY_ID: b"0000000000000000"}, "unknown key id"),
])
def test_malformed_headers(h: dict[str, bytes], match: str) -> None:
    v = trust.Verifier.from_pem(VECTORS["public_key_pem"])
    with pytest.raises(trust.VerificationError, match=match):
        v.verify_record("j1", "fdx.j1.model", b"v", h)


def test_bad_keys() -> None:
    from fdxkafka import ConfigError
    with pytest.raises(ConfigError):
        trust.Verifier.from_pem("not a key")
    with pytest.raises(ConfigError):
        trust.Verifier.load("/nonexistent/key.pem")
