"""The FedAvg paper's MNIST CNN in JAX: many Python clients, the Go aggregator.

Start the aggregator with the paper's setting (100 clients, C = 0.1, E = 5,
B = 10, IID), then this driver, which plays every client as a serverless
function would be invoked: each round it reads the global model, and each
client the model samples takes part through ``fdxkafka.run_once``:

    go run ./aggregator --embedded --model cnn --partitions 100 \\
        --min-available-clients 100 --fraction-fit 0.1 --minclients 10 \\
        --epochs 5 --batch 10 --lr 0.05 --numrounds 100 \\
        --target-accuracy 0.99 --out cnn-aggregator.json &
    pip install jax
    python cnn_jax.py --clients 100 --aggregator-out cnn-aggregator.json --out cnn.json

The aggregator evaluates every global model on MNIST's 10,000 test images
(in Go, the same network) and ends the job at the target accuracy; the
driver records per round the model's test accuracy and how long the
clients took.

The network (1,663,370 parameters, PyTorch's layout, as the aggregator's
"cnn"): conv 5×5 32 → ReLU → max-pool 2×2 → conv 5×5 64 → ReLU → max-pool
2×2 → dense 512 → ReLU → dense 10. Convolutions are written as patches
times weights: on a CPU, XLA runs that about ten times faster than its
convolution for batches of 10.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

import fdxkafka
from fdxkafka import partition, sampling

import mnist

Params = list[jax.Array]


def _conv(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """5×5 'same' cross-correlation of NHWC x with OIHW w, as im2col."""
    n, h, wd, c = x.shape
    xp = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    taps = [xp[:, i:i + h, j:j + wd, :] for i in range(5) for j in range(5)]
    cols = jnp.stack(taps, axis=-1).reshape(n * h * wd, c * 25)  # columns in [in][5][5] order
    return (cols @ w.reshape(w.shape[0], -1).T + b).reshape(n, h, wd, -1)


def _pool(x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def logits(p: Params, x: jax.Array) -> jax.Array:
    a = x.reshape(-1, 28, 28, 1)
    a = _pool(jax.nn.relu(_conv(a, p[0], p[1])))
    a = _pool(jax.nn.relu(_conv(a, p[2], p[3])))
    a = a.transpose(0, 3, 1, 2).reshape(a.shape[0], -1)  # flatten channel first, as the aggregator does
    a = jax.nn.relu(a @ p[4].T + p[5])
    return a @ p[6].T + p[7]


def _loss(p: Params, anchor: Params, mu: float, x: jax.Array, y: jax.Array) -> jax.Array:
    ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits(p, x)), y[:, None], axis=1))
    prox = sum(jnp.sum((a - b) ** 2) for a, b in zip(p, anchor))
    return ce + 0.5 * mu * prox


@jax.jit
def _step(p: Params, anchor: Params, mu: float, lr: float, x: jax.Array, y: jax.Array) -> tuple[Params, jax.Array]:
    loss, g = jax.value_and_grad(_loss)(p, anchor, mu, x, y)
    return [a - lr * b for a, b in zip(p, g)], loss


@jax.jit
def _epoch(p: Params, anchor: Params, mu: float, lr: float, xs: jax.Array, ys: jax.Array) -> tuple[Params, jax.Array]:
    def body(q: Params, xy: tuple[jax.Array, jax.Array]) -> tuple[Params, jax.Array]:
        return _step(q, anchor, mu, lr, xy[0], xy[1])
    p, losses = jax.lax.scan(body, p, (xs, ys))
    return p, losses.sum()


@jax.jit
def _correct(p: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.sum(jnp.argmax(logits(p, x), axis=1) == y)


class CNNClient(fdxkafka.Client):
    """One client: SGD on the shard the job's partition gives its id."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def _shard(self, config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        idx = partition.client_shard(self.y, fdxkafka.partition_spec(config), str(config["client_id"]),
                                     int(config["max_examples"]))
        train, held = partition.holdout(len(idx), float(config["holdout_fraction"]))
        return idx[train], idx[held] if len(held) else idx[train]

    def fit(self, parameters, config):
        p = [jnp.asarray(a) for a in parameters]
        anchor = list(p)
        idx, _ = self._shard(config)
        lr, bs, mu = float(config["learning_rate"]), int(config["batch_size"]), float(config["proximal_mu"])
        rng = np.random.default_rng(int(config["seed"]))
        full = len(idx) // bs * bs
        loss_sum = 0.0
        for _ in range(int(config["local_epochs"])):
            order = rng.permutation(idx)
            if full:
                xs = self.x[order[:full]].reshape(-1, bs, 784)
                ys = self.y[order[:full]].reshape(-1, bs)
                p, s = _epoch(p, anchor, mu, lr, xs, ys)
                loss_sum += float(s) * bs
            if full < len(order):  # the last, partial batch
                rest = order[full:]
                p, s = _step(p, anchor, mu, lr, self.x[rest], self.y[rest])
                loss_sum += float(s) * len(rest)
        seen = len(idx) * int(config["local_epochs"])
        return [np.asarray(a, np.float32) for a in p], len(idx), {"loss": loss_sum / seen}

    def evaluate(self, parameters, config):
        _, held = self._shard(config)
        p = [jnp.asarray(a) for a in parameters]
        correct = int(_correct(p, self.x[held], self.y[held]))
        return 0.0, len(held), {"accuracy": correct / len(held)}


# Rounds the FedAvg paper's FedAvg needs to reach 99% test accuracy with
# this CNN, C = 0.1, E = 5, B = 10 and IID data (McMahan et al., 2017,
# Table 2), for comparison in the record.
PAPER_ROUNDS_TO_99 = 20


def summarize(rounds: list[dict[str, Any]], aggregator: Optional[dict[str, Any]], target: float,
              command: str, aggregator_command: str) -> dict[str, Any]:
    """The run's record: per round the clients' time and, from the
    aggregator's --out, the test accuracy of the model the round produced
    and the round's duration; the first round at the target."""
    by_round = {r["round"]: r for r in (aggregator or {}).get("rounds", [])}
    out = []
    for r in rounds:
        a = by_round.get(r["round"], {})
        out.append({"round": r["round"], "accuracy": a.get("accuracy", r.get("accuracy_after")),
                    "duration_ms": a.get("duration_ms"), "clients_s": r["clients_s"], "train_s": r["train_s"],
                    "clients": len(r["clients"])})
    reached = next((r["round"] for r in out if r["accuracy"] is not None and r["accuracy"] >= target), None)
    return {"kind": "python-cnn", "command": command, "aggregator_command": aggregator_command,
            "target_accuracy": target, "rounds_to_target": reached, "paper_rounds_to_target": PAPER_ROUNDS_TO_99,
            "initial_accuracy": (aggregator or {}).get("initial", {}).get("Accuracy"),
            "total_ms": (aggregator or {}).get("total_ms"), "rounds": out}


def _wait_file(path: str, seconds: float) -> Optional[dict[str, Any]]:
    """The aggregator writes --out as it exits, after the final model."""
    end = time.monotonic() + seconds
    while True:
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            if time.monotonic() > end:
                return None
            time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", default="127.0.0.1:9092")
    ap.add_argument("--job", default="mnist")
    ap.add_argument("--clients", type=int, default=100, help="client ids 0..N-1 (the aggregator's population)")
    ap.add_argument("--model-pubkey", help="the aggregator's model-signing public key (PEM file)")
    ap.add_argument("--round-timeout", type=float, default=900.0)
    ap.add_argument("--out", help="write the run's record as JSON to this file")
    ap.add_argument("--aggregator-out", help="the aggregator's --out file, read into the record when the job ends")
    ap.add_argument("--aggregator-command", default="", help="the aggregator's command line, for the record")
    ap.add_argument("--target-accuracy", type=float, default=0.99)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    key = fdxkafka.Verifier.load(a.model_pubkey) if a.model_pubkey else None
    x, y = mnist.load("train")
    client = CNNClient(x, y)
    watch = fdxkafka.connect(broker=a.broker, job=a.job, client_id="cnn-driver", model_public_key=key)
    rounds: list[dict[str, Any]] = []
    want = 0
    try:
        while True:
            m = watch.model(want, a.round_timeout)
            acc = m.metrics.get("accuracy")
            if rounds and acc is not None:
                rounds[-1]["accuracy_after"] = acc  # the model this round produced
            if m.final:
                print(f"job {m.job} ended at round {m.round}: test accuracy {acc}")
                break
            ids = [str(c) for c in range(a.clients) if sampling.sampled(m, sampling.ROLE_FIT, str(c))]
            t0 = time.monotonic()
            train_s = 0.0
            for cid in ids:
                s = fdxkafka.run_once(client, broker=a.broker, job=a.job, client_id=cid, round=m.round,
                                      model_public_key=key, timeout=a.round_timeout)
                train_s += sum(r.train_ms for r in s.rounds) / 1000
            rounds.append({"round": m.round, "clients": ids, "clients_s": time.monotonic() - t0,
                           "train_s": train_s})
            print(f"round {m.round}: the global model's test accuracy {acc}; {len(ids)} clients trained "
                  f"in {time.monotonic() - t0:.1f} s", flush=True)
            want = m.round + 1
    finally:
        watch.close()
    if a.out:
        agg = _wait_file(a.aggregator_out, 60) if a.aggregator_out else None
        command = "python " + " ".join(shlex.quote(x) for x in [os.path.basename(sys.argv[0]), *sys.argv[1:]])
        rec = summarize(rounds, agg, a.target_accuracy, command, a.aggregator_command)
        with open(a.out, "w") as f:
            json.dump(rec, f, indent=1)
        print(f"rounds to {a.target_accuracy:.2%}: {rec['rounds_to_target']} "
              f"(the FedAvg paper: {PAPER_ROUNDS_TO_99}); record in {a.out}")


if __name__ == "__main__":
    main()
