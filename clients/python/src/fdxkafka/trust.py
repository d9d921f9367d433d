"""Signatures and MACs of the wire format, byte for byte as the Go side
(shared/trust) computes them.

Model records carry headers ``fdx-sig`` (Ed25519), ``fdx-key-id``,
``fdx-round`` and ``fdx-final``; the signature covers::

    "fdx-model-v2" 0x00 job 0x00 topic 0x00 decimal(round) 0x00 ("1"|"0") 0x00 SHA-256(value)

Updates carry ``fdx-mac`` = HMAC-SHA256(token, value) on the record (or the
manifest of a chunked update), and every chunk of a chunked update carries
``fdx-mac`` = HMAC-SHA256(token, "fdx-chunk-v1" 0x00 transfer_id 0x00
decimal(index) 0x00 SHA-256(chunk)).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import ConfigError

HEADER_SIGNATURE = "fdx-sig"
HEADER_KEY_ID = "fdx-key-id"
HEADER_ROUND = "fdx-round"
HEADER_FINAL = "fdx-final"
HEADER_MAC = "fdx-mac"

_MODEL_DOMAIN = b"fdx-model-v2"
_CHUNK_DOMAIN = b"fdx-chunk-v1"


class VerificationError(Exception):
    """A model record's signature is missing, malformed or wrong. The reader
    ignores such records; it never raises this to the user."""


@dataclass(frozen=True)
class ModelClaims:
    """What a model signature binds besides the value."""

    job: str
    topic: str
    round: int
    final: bool

    def signing_input(self, value: bytes) -> bytes:
        """The message the Ed25519 signature covers."""
        return b"\x00".join([
            _MODEL_DOMAIN,
            self.job.encode(),
            self.topic.encode(),
            str(self.round).encode(),
            b"1" if self.final else b"0",
            hashlib.sha256(value).digest(),
        ])

    @staticmethod
    def parse(job: str, topic: str, round_header: bytes | None, final_header: bytes | None) -> "ModelClaims":
        """Reads the fdx-round and fdx-final headers of a record of job's
        model topic."""
        r = (round_header or b"").decode("ascii", "replace")
        if not r.isdigit() or not r.isascii():
            raise VerificationError(f"round header {r!r}")
        if final_header not in (b"0", b"1"):
            raise VerificationError(f"final header {final_header!r}")
        return ModelClaims(job, topic, int(r), final_header == b"1")


def key_id(public_key: Ed25519PublicKey) -> str:
    """The id of a public key: the first 8 bytes of the SHA-256 of its raw
    32 bytes, in hex (shared/trust.KeyID)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Verifier:
    """Checks model signatures against one or more trusted Ed25519 keys
    (several for key rotation).

    Args:
        keys: the trusted public keys.
        allow_value_only: also accept a signature over the record's value
            alone, on a record that carries neither ``fdx-round`` nor
            ``fdx-final`` (aggregators that predate the binding sign so).
            Such a model's own job and round are still checked, and rounds
            never go back, but nothing binds it to its topic. Off by
            default; a record with either header is always held to the
            binding.
    """

    def __init__(self, keys: list[Ed25519PublicKey], *, allow_value_only: bool = False) -> None:
        if not keys:
            raise ConfigError("no public key to verify models with")
        self._keys = {key_id(k): k for k in keys}
        self.allow_value_only = allow_value_only

    @classmethod
    def from_pem(cls, pem: bytes | str, *, allow_value_only: bool = False) -> "Verifier":
        """Trusts the Ed25519 keys of every PEM "PUBLIC KEY" block in pem."""
        text = pem.decode() if isinstance(pem, bytes) else pem
        keys: list[Ed25519PublicKey] = []
        marker = "-----END PUBLIC KEY-----"
        for block in text.split(marker)[:-1]:
            start = block.find("-----BEGIN PUBLIC KEY-----")
            if start < 0:
                raise ConfigError('want PEM "PUBLIC KEY" blocks')
            try:
                k = serialization.load_pem_public_key((block[start:] + marker + "\n").encode())
            except ValueError as e:
                raise ConfigError(f"model public key: {e}") from None
            if not isinstance(k, Ed25519PublicKey):
                raise ConfigError(f"model public key: a {type(k).__name__}, want Ed25519")
            keys.append(k)
        if not keys:
            raise ConfigError('model public key: no PEM "PUBLIC KEY" block')
        return cls(keys, allow_value_only=allow_value_only)

    @classmethod
    def load(cls, pem_or_path: str | bytes | Path, *, allow_value_only: bool = False) -> "Verifier":
        """From inline PEM (an environment variable set from a secret) or the
        path of a PEM file, as the Go client's --model-pubkey."""
        if isinstance(pem_or_path, bytes):
            return cls.from_pem(pem_or_path, allow_value_only=allow_value_only)
        if isinstance(pem_or_path, str) and pem_or_path.lstrip().startswith("-----BEGIN"):
            return cls.from_pem(pem_or_path, allow_value_only=allow_value_only)
        try:
            return cls.from_pem(Path(pem_or_path).read_bytes(), allow_value_only=allow_value_only)
        except OSError as e:
            raise ConfigError(f"model public key: {e}") from None

    def verify_record(self, job: str, topic: str, value: bytes, headers: Mapping[str, bytes]) -> ModelClaims | None:
        """Verifies a model record of job's topic from its headers: the
        claims its signature binds, which the decoded model must repeat, or
        None for a value-only signature (allow_value_only). Raises
        VerificationError."""
        sig, kid = headers.get(HEADER_SIGNATURE), headers.get(HEADER_KEY_ID)
        r, f = headers.get(HEADER_ROUND), headers.get(HEADER_FINAL)
        if r is None and f is None:
            if not self.allow_value_only:
                raise VerificationError("no fdx-round/fdx-final headers: a value-only signature, not accepted")
            self._verify(value, sig, kid)
            return None
        claims = ModelClaims.parse(job, topic, r, f)
        self.verify_model(claims, value, sig, kid)
        return claims

    def verify_model(self, claims: ModelClaims, value: bytes, signature: bytes | None, kid: bytes | None) -> None:
        """Raises VerificationError unless signature, by the key kid names,
        covers claims and value."""
        self._verify(claims.signing_input(value), signature, kid)

    def _verify(self, message: bytes, signature: bytes | None, kid: bytes | None) -> None:
        if not signature:
            raise VerificationError("unsigned")
        name = (kid or b"").decode("ascii", "replace")
        key = self._keys.get(name)
        if key is None:
            raise VerificationError(f"bad signature: unknown key id {name!r}")
        try:
            key.verify(signature, message)
        except InvalidSignature:
            raise VerificationError(f"bad signature: signature of key {name} does not match the record") from None


def mac(token: str, value: bytes) -> bytes:
    """HMAC-SHA256 of value keyed by token: an update's fdx-mac."""
    return hmac.new(token.encode(), value, hashlib.sha256).digest()


def chunk_mac(token: str, transfer_id: str, index: int, value: bytes) -> bytes:
    """The fdx-mac of chunk index of a client's transfer."""
    m = hmac.new(token.encode(), digestmod=hashlib.sha256)
    m.update(_CHUNK_DOMAIN + b"\x00" + transfer_id.encode() + b"\x00" + str(index).encode() + b"\x00")
    m.update(hashlib.sha256(value).digest())
    return m.digest()
