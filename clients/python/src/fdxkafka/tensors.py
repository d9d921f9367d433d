"""Tensors on the wire (fdx.v1.Tensor) to and from NumPy arrays, with the
Go side's encodings (shared/tensor): float32, float16, int8 with a
per-tensor scale, and sparse float32 (top-k with error feedback).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ._pb.fdx.v1 import fdx_pb2 as pb
from .errors import ShapeMismatch

FLOAT32 = pb.DTYPE_FLOAT32
FLOAT16 = pb.DTYPE_FLOAT16
INT8 = pb.DTYPE_INT8
SPARSE_FLOAT32 = pb.DTYPE_SPARSE_FLOAT32

_MAX_HALF = np.float32(65504)
_MAX_SPARSE_ELEMENTS = 1 << 28


@dataclass(frozen=True)
class Spec:
    """A tensor's name and shape."""

    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _elements(t: pb.Tensor) -> int:
    limit = _MAX_SPARSE_ELEMENTS if t.dtype == SPARSE_FLOAT32 else len(t.data)
    n = 1
    for d in t.shape:
        if d <= 0 or d > 1 << 31:
            raise ValueError(f"tensor {t.name!r}: bad dimension {d} in shape {list(t.shape)}")
        n *= d
        if n > limit:
            raise ValueError(f"tensor {t.name!r}: shape {list(t.shape)} needs more than the {len(t.data)} data bytes")
    return n


def to_array(t: pb.Tensor) -> np.ndarray:
    """The tensor's values as a float32 array of its shape (a copy)."""
    n = _elements(t)
    data = t.data
    shape = tuple(t.shape)
    if t.dtype == FLOAT32:
        if len(data) != 4 * n:
            raise ValueError(f"tensor {t.name!r}: {len(data)} data bytes for shape {list(shape)} (want {4 * n})")
        return np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(shape)
    if t.dtype == FLOAT16:
        if len(data) != 2 * n:
            raise ValueError(f"tensor {t.name!r}: {len(data)} data bytes for shape {list(shape)} (want {2 * n})")
        return np.frombuffer(data, dtype="<f2").astype(np.float32).reshape(shape)
    if t.dtype == INT8:
        if len(data) != n:
            raise ValueError(f"tensor {t.name!r}: {len(data)} data bytes for shape {list(shape)} (want {n})")
        return (np.frombuffer(data, dtype=np.int8).astype(np.float32) * np.float32(t.scale)).reshape(shape)
    if t.dtype == SPARSE_FLOAT32:
        if len(data) % 8 != 0 or len(data) // 8 > n:
            raise ValueError(f"tensor {t.name!r}: {len(data)} sparse data bytes for {n} elements")
        k = len(data) // 8
        idx = np.frombuffer(data, dtype="<u4", count=k).astype(np.int64)
        vals = np.frombuffer(data, dtype="<f4", offset=4 * k, count=k)
        if k and (idx[-1] >= n or np.any(np.diff(idx) <= 0)):
            raise ValueError(f"tensor {t.name!r}: sparse indices not increasing below {n}")
        out = np.zeros(n, dtype=np.float32)
        out[idx] = vals
        return out.reshape(shape)
    raise ValueError(f"tensor {t.name!r}: unsupported dtype {t.dtype}")


def specs_of(tensors: Sequence[pb.Tensor]) -> list[Spec]:
    return [Spec(t.name, tuple(int(d) for d in t.shape)) for t in tensors]


def from_float32(spec: Spec, values: np.ndarray) -> pb.Tensor:
    v = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    return pb.Tensor(name=spec.name, shape=list(spec.shape), dtype=FLOAT32, data=v.tobytes())


def from_float16(spec: Spec, values: np.ndarray) -> pb.Tensor:
    """Rounds to the nearest float16, ties to even, saturating at ±65504 as
    the Go encoder does."""
    v = np.clip(np.asarray(values, dtype=np.float32).reshape(-1), -_MAX_HALF, _MAX_HALF)
    return pb.Tensor(name=spec.name, shape=list(spec.shape), dtype=FLOAT16, data=v.astype("<f2").tobytes())


def from_int8(spec: Spec, values: np.ndarray) -> pb.Tensor:
    """Symmetric int8 with scale max|v|/127; values round half away from zero
    (Go's math.Round)."""
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    max_abs = np.float32(np.max(np.abs(v))) if v.size else np.float32(0)
    scale = np.float32(max_abs / np.float32(127))
    if scale > 0:
        x = (v / scale).astype(np.float64)
        q = np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), -127, 127).astype(np.int8)
    else:
        q = np.zeros(v.size, dtype=np.int8)
    return pb.Tensor(name=spec.name, shape=list(spec.shape), dtype=INT8, data=q.tobytes(), scale=float(scale))


def topk_count(n: int, fraction: float) -> int:
    return max(1, min(n, int(np.ceil(fraction * n))))


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k entries of largest magnitude, ties to the lower
    index, in increasing order (shared/tensor.TopK)."""
    v = np.asarray(values).reshape(-1)
    k = max(0, min(k, v.size))
    # A stable sort of -|v| keeps equal magnitudes in index order.
    order = np.argsort(-np.abs(v.astype(np.float64)), kind="stable")[:k]
    return np.sort(order)


def from_sparse(spec: Spec, values: np.ndarray, idx: np.ndarray) -> pb.Tensor:
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    data = np.asarray(idx, dtype="<u4").tobytes() + v[idx].astype("<f4").tobytes()
    return pb.Tensor(name=spec.name, shape=list(spec.shape), dtype=SPARSE_FLOAT32, data=data)


class Residual:
    """Error feedback of top-k updates: what a long-running client did not
    send, added to its next step."""

    def __init__(self) -> None:
        self._r: list[np.ndarray] | None = None

    def encode_topk(self, step: list[np.ndarray], specs: Sequence[Spec], fraction: float) -> list[pb.Tensor]:
        if not 0 < fraction <= 1:
            raise ValueError(f"top-k fraction {fraction} outside (0, 1]")
        flat = [np.asarray(s, dtype=np.float32).reshape(-1).copy() for s in step]
        if self._r is not None and [r.size for r in self._r] != [f.size for f in flat]:
            self._r = None
        out = []
        for i, sp in enumerate(specs):
            v = flat[i]
            if self._r is not None:
                v += self._r[i]
            idx = top_k(v, topk_count(v.size, fraction))
            out.append(from_sparse(sp, v, idx))
            v[idx] = 0
        self._r = flat
        return out


def encode_as(values: Sequence[np.ndarray], specs: Sequence[Spec], dtype: int) -> list[pb.Tensor]:
    """Encodes values in dtype (UNSPECIFIED is float32)."""
    encoders: dict[int, Callable[[Spec, np.ndarray], pb.Tensor]] = {
        pb.DTYPE_UNSPECIFIED: from_float32, FLOAT32: from_float32, FLOAT16: from_float16, INT8: from_int8}
    enc = encoders.get(dtype)
    if enc is None:
        raise ValueError(f"unsupported update encoding {pb.DType.Name(dtype) if dtype in pb.DType.values() else dtype}")
    return [enc(sp, v) for sp, v in zip(specs, values)]


def check_shapes(arrays: Sequence[np.ndarray], specs: Sequence[Spec], what: str) -> None:
    """Raises ShapeMismatch unless arrays have the specs' shapes, in order."""
    if len(arrays) != len(specs):
        raise ShapeMismatch(f"{what}: {len(arrays)} arrays, the model has {len(specs)} tensors "
                            f"({', '.join(f'{s.name}{list(s.shape)}' for s in specs)})")
    for a, s in zip(arrays, specs):
        shape = tuple(np.shape(a))
        if shape != s.shape:
            raise ShapeMismatch(f"{what}: tensor {s.name!r} has shape {list(shape)}, the model's is {list(s.shape)}")
