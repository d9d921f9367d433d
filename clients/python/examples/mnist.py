"""MNIST from the repository's embedded IDX files (shared/dataset/mnist), no
download: images as float32 in [0, 1] (the Go side's convention), labels as
uint8, in the files' order, which is the order the job's partition refers to."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path(__file__).resolve().parents[3] / "shared" / "dataset" / "mnist"


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        b = f.read()
    if b[:2] != b"\x00\x00" or b[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = b[3]
    dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(b, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims)


def load(split: str = "train", directory: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images of shape [n, 784] in [0, 1], labels of shape [n])."""
    d = Path(directory or os.environ.get("FDX_MNIST_DIR") or DEFAULT_DIR)
    prefix = "train" if split == "train" else "t10k"
    x = _idx(d / f"{prefix}-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / np.float32(255)
    y = _idx(d / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return x, y
