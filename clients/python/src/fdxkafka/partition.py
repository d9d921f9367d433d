"""A client's shard of the job's data set, as the Go side derives it
(shared/dataset): the job's PartitionSpec travels in every model's train
config, so a Python client that holds the same data set (e.g. MNIST's 60,000
training examples in their published order) trains on exactly the examples
a Go client of the same id would. Schemes "iid" and "shards"; "dirichlet"
is not implemented here.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ._pb.fdx.v1 import fdx_pb2 as pb
from .errors import ConfigError

_M64 = 2**64 - 1
_STREAM_IID = 0x5D1F_0A3E_57A7_1C02
_STREAM_SHARDS = 0x5D1F_0A3E_57A7_1C03


class PCG:
    """Go's math/rand/v2 PCG (128-bit LCG, DXSM output), bit for bit."""

    _MUL = (2549297995355413924 << 64) | 4865540595714422341
    _INC = (6364136223846793005 << 64) | 1442695040888963407

    def __init__(self, seed1: int, seed2: int) -> None:
        self._state = ((seed1 & _M64) << 64) | (seed2 & _M64)

    def uint64(self) -> int:
        self._state = (self._state * self._MUL + self._INC) & (2**128 - 1)
        hi, lo = self._state >> 64, self._state & _M64
        hi ^= hi >> 32
        hi = (hi * 0xDA942042E4DD58B5) & _M64
        hi ^= hi >> 48
        return (hi * (lo | 1)) & _M64

    def int_n(self, n: int) -> int:
        """Uniform in [0, n) without modulo bias (Lemire), as dataset's rng.intN."""
        bound = n
        m = self.uint64() * bound
        hi, lo = m >> 64, m & _M64
        if lo < bound:
            threshold = ((1 << 64) - bound) % bound
            while lo < threshold:
                m = self.uint64() * bound
                hi, lo = m >> 64, m & _M64
        return hi


def _shuffle(r: PCG, s: list[int]) -> None:
    for i in range(len(s) - 1, 0, -1):
        j = r.int_n(i + 1)
        s[i], s[j] = s[j], s[i]


def shard_index(client_id: str, n: int) -> int:
    """The partition a client id maps onto: a decimal id k takes k mod n,
    any other id FNV-1a-64 of its bytes mod n."""
    if n < 1:
        raise ConfigError(f"{n} partitions")
    if client_id and client_id.isascii() and client_id.isdigit():
        return int(client_id) % n
    h = 0xCBF29CE484222325
    for b in client_id.encode():
        h = ((h ^ b) * 0x100000001B3) & _M64
    return h % n


def partition(labels: Sequence[int] | np.ndarray, spec: pb.PartitionSpec) -> list[np.ndarray]:
    """Every partition's example indices, ascending, for a data set with these
    labels (in the data set's order)."""
    n = len(labels)
    parts = spec.num_partitions
    if parts < 1 or n < parts:
        raise ConfigError(f"partition spec: {parts} partitions for {n} examples")
    if spec.scheme == "iid":
        perm = list(range(n))
        _shuffle(PCG(spec.seed, _STREAM_IID), perm)
        base, extra = divmod(n, parts)
        out, start = [], 0
        for p in range(parts):
            size = base + (1 if p < extra else 0)
            out.append(np.sort(np.asarray(perm[start:start + size], dtype=np.int64)))
            start += size
        return out
    if spec.scheme == "shards":
        k = spec.shards_per_client or 2
        num_shards = parts * k
        if num_shards > n:
            raise ConfigError(f"partition spec: {num_shards} shards for {n} examples")
        by_label = np.argsort(np.asarray(labels), kind="stable")
        shards = list(range(num_shards))
        _shuffle(PCG(spec.seed, _STREAM_SHARDS), shards)
        out = []
        for p in range(parts):
            idx = [by_label[s * n // num_shards:(s + 1) * n // num_shards] for s in shards[p * k:(p + 1) * k]]
            out.append(np.sort(np.concatenate(idx)).astype(np.int64))
        return out
    raise ConfigError(f"partition scheme {spec.scheme!r} is not implemented in the Python client (iid, shards)")


def client_shard(labels: Sequence[int] | np.ndarray, spec: pb.PartitionSpec, client_id: str, max_examples: int = 0) -> np.ndarray:
    """The example indices spec assigns to client_id, capped to the first
    max_examples when positive."""
    parts = partition(labels, spec)
    idx = parts[shard_index(client_id, len(parts))]
    return idx[:max_examples] if max_examples > 0 else idx


def holdout(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions of a shard of n examples that train and that are held out for
    federated evaluation: i is held out when floor((i+1)f) > floor(i f)."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"holdout fraction {fraction} outside [0, 1)")
    held = np.array([i for i in range(n) if math.floor((i + 1) * fraction) > math.floor(i * fraction)], dtype=np.int64)
    train = np.setdiff1d(np.arange(n, dtype=np.int64), held)
    return train, held
