"""Bad input gets typed errors (fdxkafka.FdxError subclasses), never a
Kafka or gRPC library exception: a broker that is down, a job that does
not exist, a model of the wrong shape for the user's fit."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

import fdxkafka
from conftest import Cluster, job_id
from logreg_numpy import LogRegClient


def closed_port() -> int:
    """A loopback port nothing listens on (just released by the kernel)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Fixed(fdxkafka.Client):
    def __init__(self, shapes=None, out=None, n=10) -> None:
        self.shapes, self.out, self.n = shapes, out, n

    def get_parameters(self, config):
        return None if self.shapes is None else [np.zeros(s, np.float32) for s in self.shapes]

    def fit(self, parameters, config):
        return (self.out if self.out is not None else parameters), self.n, {}


@pytest.mark.parametrize("channel", ["kafka", "grpc"])
def test_broker_down(channel: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(fdxkafka.BrokerUnavailable, match=f"127.0.0.1:{(port := closed_port())}"):
        fdxkafka.run_once(Fixed(), broker=f"127.0.0.1:{port}", job="j", client_id="0", channel=channel,
                          connect_timeout=2)
    assert time.monotonic() - t0 < 15


def test_unknown_job(cluster: Cluster, job: str) -> None:
    _, addr, _ = cluster.aggregator(job, "--numrounds", "1")
    with pytest.raises(fdxkafka.JobNotFound, match="no-such-job"):
        fdxkafka.run_once(Fixed(), broker=addr, job=job_id("no-such-job"), client_id="0", channel=cluster.channel,
                          timeout=3)


@pytest.mark.parametrize("case", ["get_parameters", "fit_shape", "fit_count", "fit_nan", "fit_examples"])
def test_bad_model(cluster: Cluster, job: str, case: str) -> None:
    """The job's model is logistic regression on MNIST: [10, 784] and [10]."""
    _, addr, _ = cluster.aggregator(job, "--numrounds", "1", "--minclients", "1")
    want = {
        "get_parameters": (Fixed(shapes=[(10, 785), (10,)]), fdxkafka.ShapeMismatch, r"fc0.weight.*\[10, 785\]"),
        "fit_shape": (Fixed(out=[np.zeros((784, 10), np.float32), np.zeros(10, np.float32)]),
                      fdxkafka.ShapeMismatch, r"\[784, 10\]"),
        "fit_count": (Fixed(out=[np.zeros((10, 784), np.float32)]), fdxkafka.ShapeMismatch, "1 arrays"),
        "fit_nan": (Fixed(out=[np.full((10, 784), np.nan, np.float32), np.zeros(10, np.float32)]),
                    fdxkafka.FitResultError, "non-finite"),
        "fit_examples": (Fixed(n=0), fdxkafka.FitResultError, "number of examples"),
    }
    client, exc, match = want[case]
    key = fdxkafka.Verifier.load(cluster.pub_file, allow_value_only=True) if cluster.channel == "kafka" else None
    with pytest.raises(exc, match=match):
        fdxkafka.run_once(client, broker=addr, job=job, client_id="0", channel=cluster.channel, timeout=30,
                          model_public_key=key)


def test_bad_arguments() -> None:
    for kw in [dict(job="a b"), dict(client_id=""), dict(channel="http"), dict(broker="")]:
        args = dict(broker="127.0.0.1:1", job="j", client_id="0", channel="kafka") | kw
        with pytest.raises(fdxkafka.ConfigError):
            fdxkafka.run_once(LogRegClient(np.zeros((1, 784)), np.zeros(1)), **args)


def test_update_over_topic_limit(broker: str, job: str) -> None:
    """An update the broker refuses for its size is Oversize, not a Kafka
    library error."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from fdxkafka._pb.fdx.v1 import fdx_pb2 as pb
    from fdxkafka.kafka_channel import KafkaChannel

    admin = AdminClient({"bootstrap.servers": broker})
    for t in (fdxkafka.rules.model_topic(job), fdxkafka.rules.updates_topic(job)):
        nt = NewTopic(t, 1, 1, config={"max.message.bytes": "100000"})
        admin.create_topics([nt], operation_timeout=30)[t].result(30)
    u = pb.Update(job=job, client_id="0", base_round=1, num_examples=1)
    u.metrics["pad"] = 0.0
    u.params.add(name="w", shape=[50000], data=b"\x00" * 200000)
    with KafkaChannel(broker, job, chunk_bytes=1 << 20) as ch:
        with pytest.raises(fdxkafka.Oversize, match="round 1"):
            ch.submit(u, 30)
    with KafkaChannel(broker, job, chunk_bytes=16 << 10) as ch:
        # In chunks below the limit, which bounds record batches: the
        # chunks, produced at once, must not share one.
        ch.submit(u, 30)
        assert ch.stats.messages_sent == 14
    del admin
