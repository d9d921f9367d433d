"""Chunked transfers (shared/kafkachan/chunk.go, shared/grpcchan/chunk.go).

A serialized message larger than the chunk size travels as raw slices of
it, in order, plus a fdx.v1.TransferManifest (total size, chunk count, chunk
size, SHA-256 of the whole, CRC-32C of each chunk). On Kafka the chunk
records carry headers ``fdx-transfer`` (the transfer id) and ``fdx-chunk``
("index/count/total"); the manifest record carries ``fdx-transfer`` and
``fdx-manifest: 1`` and comes after every chunk. The chunks of a model
whose manifest lists their places (chunk_partitions, chunk_offsets) carry
``fdx-spread-chunk`` instead of ``fdx-chunk``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

import google_crc32c

from ._pb.fdx.v1 import fdx_pb2 as pb
from .errors import TransferError

DEFAULT_CHUNK_BYTES = 1 << 20
"""The chunk size, and the size above which a message is chunked: the
aggregator sizes its topics' max.message.bytes for a chunk of it."""

HEADER_TRANSFER = "fdx-transfer"
HEADER_CHUNK = "fdx-chunk"
HEADER_MANIFEST = "fdx-manifest"
HEADER_SPREAD = "fdx-spread-chunk"

MAX_TRANSFER_BYTES = 2**31 - 1
MAX_CHUNKS = 1 << 16


def crc32c(b: bytes) -> int:
    return int(google_crc32c.value(b))


@dataclass
class Outgoing:
    """A message split for a chunked transfer."""

    transfer_id: str
    whole: bytes
    chunk_bytes: int
    manifest: pb.TransferManifest

    def chunk(self, i: int) -> bytes:
        return self.whole[i * self.chunk_bytes:(i + 1) * self.chunk_bytes]

    @property
    def count(self) -> int:
        return self.manifest.chunk_count


def split(whole: bytes, chunk_bytes: int) -> Outgoing:
    """Describes whole in chunks of chunk_bytes, under a fresh random id."""
    n = max(1, -(-len(whole) // chunk_bytes))
    if n > MAX_CHUNKS:
        raise TransferError(f"transfer of {len(whole)} bytes needs {n} chunks of {chunk_bytes}, over {MAX_CHUNKS}")
    tid = secrets.token_hex(12)
    man = pb.TransferManifest(transfer_id=tid, total_size=len(whole), chunk_count=n, chunk_size=chunk_bytes,
                              sha256=hashlib.sha256(whole).digest())
    out = Outgoing(tid, whole, chunk_bytes, man)
    man.chunk_crc32c.extend(crc32c(out.chunk(i)) for i in range(n))
    return out


def consistent(man: pb.TransferManifest, *, listed: bool) -> bool:
    """Whether man describes a whole its chunk count and size can make up
    (and, listed, names a place for every chunk)."""
    n, size, total = man.chunk_count, man.chunk_size, man.total_size
    ok = (1 <= n <= MAX_CHUNKS and size > 0 and 0 <= total <= MAX_TRANSFER_BYTES
          and (n - 1) * size < max(total, 1) and total <= n * size
          and len(man.chunk_crc32c) == n and len(man.sha256) == 32)
    if listed:
        ok = ok and total > 0 and len(man.chunk_partitions) == n and len(man.chunk_offsets) == n
    return ok


def assemble(man: pb.TransferManifest, chunks: dict[int, bytes]) -> bytes:
    """The whole man describes from its chunks by index; raises TransferError
    when one is missing or anything does not match."""
    if not consistent(man, listed=False):
        raise TransferError(f"transfer {man.transfer_id}: inconsistent manifest "
                            f"({man.chunk_count} chunks of {man.chunk_size}, {man.total_size} bytes)")
    missing = [i for i in range(man.chunk_count) if i not in chunks]
    if missing:
        raise TransferError(f"transfer {man.transfer_id}: {len(missing)} of {man.chunk_count} chunks missing")
    parts = []
    for i in range(man.chunk_count):
        c = chunks[i]
        want = min(man.chunk_size, man.total_size - i * man.chunk_size)
        if len(c) != want:
            raise TransferError(f"transfer {man.transfer_id}: chunk {i} holds {len(c)} bytes, the manifest says {want}")
        if crc32c(c) != man.chunk_crc32c[i]:
            raise TransferError(f"transfer {man.transfer_id}: chunk {i} of {man.chunk_count} does not match its CRC-32C")
        parts.append(c)
    whole = b"".join(parts)
    if hashlib.sha256(whole).digest() != man.sha256:
        raise TransferError(f"transfer {man.transfer_id}: SHA-256 of the reassembled {len(whole)} bytes does not match")
    return whole


@dataclass
class Pending:
    """Chunks of one transfer read so far, by index."""

    transfer_id: str
    count: int
    total: int
    first_offset: int
    chunks: dict[int, bytes] = field(default_factory=dict)


def parse_chunk_header(value: bytes | None) -> tuple[int, int, int]:
    """index, count, total of a "index/count/total" header."""
    try:
        i, n, t = (int(x) for x in (value or b"").decode("ascii").split("/"))
    except (ValueError, UnicodeDecodeError):
        raise TransferError(f"chunk header {value!r}") from None
    if not (1 <= n <= MAX_CHUNKS and 0 <= i < n and 0 <= t <= MAX_TRANSFER_BYTES):
        raise TransferError(f"chunk header {value!r}")
    return i, n, t
