"""A NumPy logistic-regression client for the job's MNIST shard:

    python logreg_numpy.py --broker 127.0.0.1:9092 --job mnist --client-id 3

It trains the aggregator's "logreg" model (fc0.weight [10, 784], fc0.bias
[10]) with minibatch SGD on softmax cross-entropy (FedProx's term when the
job sets mu), on the shard the job's partition spec gives its client id:
the examples a Go client of the same id trains on.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

import fdxkafka
from fdxkafka import partition

import mnist


def softmax_ce(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Probabilities minus one-hot, the summed loss and the correct count."""
    z = x @ w.T + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    loss = float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-300)).sum())
    correct = int((p.argmax(axis=1) == y).sum())
    p[np.arange(len(y)), y] -= 1
    return p, loss, correct


class LogRegClient(fdxkafka.Client):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def get_parameters(self, config):
        return [np.zeros((10, 784), np.float32), np.zeros(10, np.float32)]

    def _shard(self, config):
        idx = partition.client_shard(self.y, fdxkafka.partition_spec(config), str(config["client_id"]),
                                     int(config["max_examples"]))
        train, held = partition.holdout(len(idx), float(config["holdout_fraction"]))
        return idx[train], idx[held] if len(held) else idx[train]

    def fit(self, parameters, config):
        w, b = (p.astype(np.float64) for p in parameters)
        w0, b0 = w.copy(), b.copy()
        idx, _ = self._shard(config)
        lr, bs, mu = float(config["learning_rate"]), int(config["batch_size"]), float(config["proximal_mu"])
        rng = np.random.default_rng(int(config["seed"]))
        loss_sum, correct = 0.0, 0
        for _ in range(int(config["local_epochs"])):
            order = rng.permutation(idx)
            for s in range(0, len(order), bs):
                batch = order[s:s + bs]
                g, loss, c = softmax_ce(self.x[batch], self.y[batch], w, b)
                loss_sum, correct = loss_sum + loss, correct + c
                g /= len(batch)
                w -= lr * (g.T @ self.x[batch] + mu * (w - w0))
                b -= lr * (g.sum(axis=0) + mu * (b - b0))
        seen = len(idx) * int(config["local_epochs"])
        return ([w.astype(np.float32), b.astype(np.float32)], len(idx),
                {"loss": loss_sum / seen, "accuracy": correct / seen})

    def evaluate(self, parameters, config):
        _, held = self._shard(config)
        _, loss, correct = softmax_ce(self.x[held], self.y[held], *(p.astype(np.float64) for p in parameters))
        return loss / len(held), len(held), {"accuracy": correct / len(held)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", default="127.0.0.1:9092")
    ap.add_argument("--channel", default="kafka", choices=["kafka", "grpc"])
    ap.add_argument("--job", default="mnist")
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--token")
    ap.add_argument("--model-pubkey", help="the aggregator's model-signing public key (PEM file)")
    ap.add_argument("--allow-value-only-signatures", action="store_true",
                    help="also accept models signed over the value alone (aggregators that predate the binding)")
    a = ap.parse_args()
    key = a.model_pubkey and fdxkafka.Verifier.load(a.model_pubkey, allow_value_only=a.allow_value_only_signatures)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    x, y = mnist.load("train")
    s = fdxkafka.run_client(LogRegClient(x, y), broker=a.broker, job=a.job, client_id=a.client_id,
                            channel=a.channel, token=a.token, model_public_key=key or None)
    print(f"job {s.job} finished at round {s.last_round}: {s.final_metrics}")


if __name__ == "__main__":
    main()
