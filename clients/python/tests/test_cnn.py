"""Python clients in a job of the aggregator's "cnn" model, the FedAvg
paper's MNIST CNN that only Python clients train: its 6.6 MB models and
updates travel chunked on every channel, and the aggregator folds them.

The clients here do not need a deep-learning framework: their "training"
moves the output layer's bias toward the log class frequencies of their
shard, so the aggregate of a round is known exactly."""

from __future__ import annotations

from typing import Any

import numpy as np

import fdxkafka
from conftest import Cluster, job_id, read_out
from fdxkafka import partition
from test_e2e import run_python, tokens

CNN_TENSORS = [("conv1.weight", [32, 1, 5, 5]), ("conv1.bias", [32]), ("conv2.weight", [64, 32, 5, 5]),
               ("conv2.bias", [64]), ("fc1.weight", [512, 3136]), ("fc1.bias", [512]), ("fc2.weight", [10, 512]),
               ("fc2.bias", [10])]


class BiasPriorClient(fdxkafka.Client):
    """Moves fc2.bias halfway to the log class frequencies of its shard and
    leaves every other tensor as it came."""

    def __init__(self, y: np.ndarray) -> None:
        self.y = y
        self.received: dict[int, list[np.ndarray]] = {}
        self.sent: dict[int, tuple[list[np.ndarray], int]] = {}

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]):
        idx = partition.client_shard(self.y, fdxkafka.partition_spec(config), str(config["client_id"]),
                                     int(config["max_examples"]))
        counts = np.bincount(self.y[idx], minlength=10)
        prior = np.log((counts + 1) / (counts.sum() + 10))
        new = [p.copy() for p in parameters]
        new[7] = (0.5 * parameters[7] + 0.5 * prior).astype(np.float32)
        rnd = int(config["round"])
        self.received[rnd] = parameters
        self.sent[rnd] = (new, len(idx))
        return new, len(idx), {}


def test_cnn_job(cluster: Cluster, mnist_train) -> None:
    _, y = mnist_train
    ids = ["0", "1"]
    job = job_id("cnn-" + cluster.kind)
    toks = tokens(ids, job)
    agg, addr, out = cluster.aggregator(job, "--model", "cnn", "--minclients", "2", "--partitions", "2",
                                        "--numrounds", "2", "--max-examples", "300", "--eval-examples", "200",
                                        "--seed", "3", tokens=toks)
    clients = {c: BiasPriorClient(y) for c in ids}
    py = run_python(cluster, addr, job, clients, toks)
    res = read_out(agg, out)

    assert [r["round"] for r in res["rounds"]] == [1, 2]
    for r in res["rounds"]:
        assert sorted(r["contributors"]) == ids, f"round {r['round']}"
    assert not res.get("rejected"), res.get("rejected")
    for c, s in py.items():
        assert [(r.round, r.status) for r in s.rounds] == [(1, "trained"), (2, "trained")], c

    # The clients saw the CNN's layout, and round 2's model is round 1's
    # FedAvg: the untouched tensors exactly, the bias as the weighted mean.
    first = clients["0"].received[1]
    assert [(list(a.shape)) for a in first] == [s for _, s in CNN_TENSORS]
    assert all(np.array_equal(a, b) for a, b in zip(first, clients["1"].received[1]))
    second = clients["0"].received[2]
    for i in range(7):
        assert np.array_equal(second[i], first[i]), CNN_TENSORS[i][0]
    (b0, n0), (b1, n1) = ((clients[c].sent[1][0][7], clients[c].sent[1][1]) for c in ids)
    want = (n0 * b0.astype(np.float64) + n1 * b1.astype(np.float64)) / (n0 + n1)
    assert np.allclose(second[7], want, rtol=0, atol=1e-6), (second[7], want)
    assert not np.array_equal(second[7], first[7])

    final = {t["name"]: t for t in res["final_model"]["tensors"]}
    assert [(n, final[n]["shape"]) for n, _ in CNN_TENSORS] == CNN_TENSORS
    assert 0 <= res["final_model"]["metrics"]["accuracy"] <= 1
