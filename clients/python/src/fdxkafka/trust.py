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
    (several for key rotation)."""

    def __init__(self, keys: list[Ed25519PublicKey]) -> None:
        if not keys:
            raise ConfigError("no public key to verify models with")
        self._keys = {key_id(k): k for k in keys}

    @classmethod
    def from_pem(cls, pem: bytes | str) -> "Verifier":
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
        return cls(keys)

    @classmethod
    def load(cls, pem_or_path: str | bytes | Path) -> "Verifier":
        """From inline PEM (an environment variable set from a secret) or the
        path of a PEM file, as the Go client's --model-pubkey."""
        if isinstance(pem_or_path, bytes):
            return cls.from_pem(pem_or_path)
        if isinstance(pem_or_path, str) and pem_or_path.lstrip().startswith("-----BEGIN"):
            return cls.from_pem(pem_or_path)
        try:
            return cls.from_pem(Path(pem_or_path).read_bytes())
        except OSError as e:
            raise ConfigError(f"model public key: {e}") from None

    def verify_model(self, claims: ModelClaims, value: bytes, signature: bytes | None, kid: bytes | None) -> None:
        """Raises VerificationError unless signature, by the key kid names,
        covers claims and value."""
        if not signature:
            raise VerificationError("unsigned")
        name = (kid or b"").decode("ascii", "replace")
        key = self._keys.get(name)
        if key is None:
            raise VerificationError(f"bad signature: unknown key id {name!r}")
        try:
            key.verify(signature, claims.signing_input(value))
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
