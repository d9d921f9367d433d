"""The Python client computes what the Go packages compute (sampling
hashes, shard assignment, partitions, holdout, client seeds, update
encodings), read from the Go code itself (tests/testdata/goref), and maps every
wire rejection reason to its exception."""

from __future__ import annotations

import base64
import json
import subprocess

import numpy as np
import pytest

import fdxkafka
from conftest import REPO
from fdxkafka import partition, sampling, tensors
from fdxkafka._pb.fdx.v1 import fdx_pb2 as pb


@pytest.fixture(scope="module")
def goref() -> dict:
    r = subprocess.run(["go", "run", "./clients/python/tests/testdata/goref"], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_sample_hashes(goref: dict) -> None:
    for s in goref["samples"]:
        assert sampling.sample_hash(s["seed"], s["round"], s["role"], s["client_id"]) == int(s["hash"]), s


def test_shards(goref: dict, mnist_train) -> None:
    _, y = mnist_train
    for s in goref["shards"]:
        spec = pb.PartitionSpec(scheme=s["scheme"], num_partitions=s["num_partitions"], seed=s["seed"],
                                shards_per_client=2)
        assert partition.shard_index(s["client_id"], s["num_partitions"]) == s["index"], s
        idx = partition.client_shard(y, spec, s["client_id"])
        assert (len(idx), idx[:10].tolist(), int(idx.sum())) == (s["size"], s["first"], s["index_sum"]), s


def test_holdout(goref: dict) -> None:
    _, held = partition.holdout(600, 0.2)
    assert held.tolist() == goref["held_out"]


def test_seeds(goref: dict) -> None:
    for s in goref["seeds"]:
        assert fdxkafka.client_seed(s["job_seed"], s["client_id"], s["round"]) == int(s["seed"]), s


def test_encodings(goref: dict) -> None:
    for e in goref["encodings"]:
        values = np.asarray(e["values"], np.float32)
        spec = tensors.Spec("t", (len(values),))
        dtype = pb.DType.Value(e["dtype"])
        if dtype == pb.DTYPE_SPARSE_FLOAT32:
            t = tensors.Residual().encode_topk([values.copy()], [spec], 0.3)[0]
        else:
            t = tensors.encode_as([values], [spec], dtype)[0]
            assert np.float32(t.scale) == np.float32(e["scale"]), e["dtype"]
        assert t.data == base64.b64decode(e["data"]), e["dtype"]


def test_reject_reasons() -> None:
    """One exception per wire reason, with the wire's number and name."""
    names = {v: n for n, v in pb.RejectReason.items() if v != 0}
    assert {c.wire for c in fdxkafka.REJECTIONS} == set(names)
    for c in fdxkafka.REJECTIONS:
        assert names[c.wire] == "REJECT_REASON_" + c.reason.upper(), (c, names[c.wire])
        e = fdxkafka.UpdateRejected.from_wire(c.wire, f"{c.reason}: why", 3)
        assert type(e) is c and e.detail == "why" and e.round == 3
    assert type(fdxkafka.UpdateRejected.from_wire(999, "x")) is fdxkafka.UpdateRejected
    assert issubclass(fdxkafka.UnauthenticatedUpdate, fdxkafka.Unauthenticated)
