"""The participant: a user's model (a :class:`Client`, in the habit of
Flower's NumPyClient) takes part in a job run by the Go aggregator, over
Kafka or gRPC, one round (:func:`run_once`) or until the job ends
(:func:`run_client`). One round is what client/participant does: fetch the
newest model, check the round asks this client to do something (sampling),
train and/or evaluate, send the update.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from . import rules, sampling, tensors, transfer
from ._pb.fdx.v1 import fdx_pb2 as pb
from .channel import Channel, Deadline
from .errors import (BrokerUnavailable, ChecksumMismatch, ConfigError, Duplicate, FdxError, FutureRound, Incomplete,
                     ModelTimeout, NormBound, NotSampled, NotStored, ShapeMismatch, StaleRound, UpdateRejected)
from .grpc_channel import TLS, GrpcChannel
from .kafka_channel import KafkaChannel
from .trust import Verifier

log = logging.getLogger("fdxkafka")

Scalar = Union[bool, int, float, str]
Config = dict[str, Scalar]
Metrics = dict[str, float]

ROUND_REJECTIONS = (StaleRound, FutureRound, Duplicate, NotSampled, NotStored, Incomplete, ChecksumMismatch, NormBound)
"""Refusals run_client takes as the end of one round, not of the client: the
round closed or moved on, or the update was lost in transit. Others (bad
credentials, wrong shapes, an unknown client id) would recur every round
and are raised."""

NOT_SAMPLED = "not_sampled"
TRAINED = "trained"
EVALUATED = "evaluated"


class FitResultError(FdxError, ValueError):
    """The user's fit or evaluate returned something that cannot be sent:
    not a (parameters, num_examples, metrics) tuple, a non-positive example
    count, non-finite values, or non-numeric metrics."""


class Client:
    """Base class of a user's model, as Flower's ``NumPyClient``.

    Override :meth:`fit`; override :meth:`evaluate` to take part in
    federated evaluation, and :meth:`get_parameters` to have the global
    model's shapes checked before they reach ``fit`` (a mismatch raises
    :class:`ShapeMismatch` instead of a NumPy error deep in the user's code).
    """

    def get_parameters(self, config: Config) -> Optional[list[np.ndarray]]:
        """The model's parameters, in the job's tensor order; None (the
        default) skips the shape check."""
        return None

    def fit(self, parameters: list[np.ndarray], config: Config) -> tuple[list[np.ndarray], int, Metrics]:
        """Trains from the global parameters on the local data.

        Returns the new parameters (same shapes, same order), the number of
        examples trained on, and metrics (e.g. ``{"loss": ..., "accuracy": ...}``).
        ``config`` holds the round's train config: ``round``,
        ``learning_rate``, ``batch_size``, ``local_epochs``, ``proximal_mu``,
        ``seed`` (this client's for this round), ``holdout_fraction``,
        ``partition_*``, ``job``, ``client_id``, ...
        """
        raise NotImplementedError("a Client must implement fit")

    def evaluate(self, parameters: list[np.ndarray], config: Config) -> tuple[float, int, Metrics]:
        """Evaluates the global parameters on local held-out data: returns the
        loss, the number of examples and metrics (``accuracy`` is reported as
        the round's ``eval_accuracy``)."""
        raise NotImplementedError


def _evaluates(client: Client) -> bool:
    return type(client).evaluate is not Client.evaluate


@dataclass
class RoundResult:
    """What one round asked of this client and what it did."""

    round: int
    status: str
    examples: int = 0
    metrics: Metrics = field(default_factory=dict)
    eval_loss: Optional[float] = None
    eval_metrics: Metrics = field(default_factory=dict)
    fetch_ms: float = 0.0
    train_ms: float = 0.0
    publish_ms: float = 0.0


@dataclass
class Summary:
    """What a run did: its rounds, and the final model when the job ended."""

    job: str
    client_id: str
    rounds: list[RoundResult] = field(default_factory=list)
    final: bool = False
    last_round: int = 0
    final_parameters: Optional[list[np.ndarray]] = None
    final_metrics: Metrics = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    records_rejected: int = 0
    # gRPC: the job's last round had passed and the aggregator stopped
    # serving before this client fetched the final model.
    final_missed: bool = False
    models_bound: int = 0
    models_value_only: int = 0


def client_seed(job_seed: int, client_id: str, round: int) -> int:  # noqa: A002
    """The client's training seed for a round (participant.Seed): FNV-1a 64
    of "seed/client_id/round"."""
    h = 0xCBF29CE484222325
    for b in f"{job_seed}/{client_id}/{round}".encode():
        h = ((h ^ b) * 0x100000001B3) & (2**64 - 1)
    return h


def train_config(m: pb.GlobalModel, client_id: str) -> Config:
    """The round's train config as Flower-style scalars."""
    c = m.train_config
    return {
        "job": m.job,
        "client_id": client_id,
        "round": m.round,
        "num_rounds": m.num_rounds,
        "model": c.model,
        "dataset": c.dataset,
        "learning_rate": c.learning_rate,
        "batch_size": c.batch_size,
        "local_epochs": c.local_epochs,
        "proximal_mu": c.proximal_mu,
        "seed": client_seed(c.seed, client_id, m.round),
        "job_seed": c.seed,
        "max_examples": c.max_examples,
        "holdout_fraction": c.holdout_fraction,
        "partition_scheme": c.partition.scheme,
        "num_partitions": c.partition.num_partitions,
        "partition_seed": c.partition.seed,
        "partition_alpha": c.partition.alpha,
        "shards_per_client": c.partition.shards_per_client,
        "async": getattr(c, "async"),
        "update_encoding": pb.DType.Name(c.update_dtype),
        "topk_fraction": c.topk_fraction,
    }


def partition_spec(config: Mapping[str, Scalar]) -> pb.PartitionSpec:
    """The job's partition spec from a round's config (for partition.client_shard)."""
    return pb.PartitionSpec(scheme=str(config["partition_scheme"]), num_partitions=int(config["num_partitions"]),
                            seed=int(config["partition_seed"]), alpha=float(config["partition_alpha"]),
                            shards_per_client=int(config["shards_per_client"]))


def _now() -> Timestamp:
    t = Timestamp()
    t.GetCurrentTime()
    return t


def _metrics(m: Any, what: str) -> Metrics:
    if m is None:
        return {}
    if not isinstance(m, Mapping):
        raise FitResultError(f"{what}: metrics must be a dict of numbers, got {type(m).__name__}")
    out: Metrics = {}
    for k, v in m.items():
        if isinstance(v, (bool, int, float, np.integer, np.floating)):
            out[str(k)] = float(v)
        else:
            raise FitResultError(f"{what}: metric {k!r} is a {type(v).__name__}, the wire carries numbers only")
    return out


def _examples(n: Any, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise FitResultError(f"{what}: the number of examples must be a positive int, got {n!r}")
    return int(n)


class Participant:
    """Runs rounds for one client identity on one channel."""

    def __init__(self, client: Client, channel: Channel, job: str, client_id: str) -> None:
        self.client, self.channel, self.job, self.client_id = client, channel, job, client_id
        self.residual = tensors.Residual()

    def round(self, min_round: int, timeout: float, residual: Optional[tensors.Residual]) -> tuple[pb.GlobalModel, Optional[RoundResult]]:
        """Takes part in the first round at least min_round; returns the model
        and what was done (None for a final model)."""
        start = time.monotonic()
        deadline = Deadline(timeout)
        m = self.channel.model(min_round, deadline.left())
        received = _now()
        fetch_ms = (time.monotonic() - start) * 1000
        if m.final:
            return m, None
        fit = sampling.sampled(m, sampling.ROLE_FIT, self.client_id)
        ev = sampling.sampled(m, sampling.ROLE_EVALUATE, self.client_id) and _evaluates(self.client)
        if not fit and not ev:
            log.info("client %s: not sampled in round %d", self.client_id, m.round)
            return m, RoundResult(m.round, NOT_SAMPLED, fetch_ms=fetch_ms)
        res, u = self.work(m, fit, ev, residual)
        res.fetch_ms = fetch_ms
        u.timings.model_received.CopyFrom(received)
        u.timings.sent.CopyFrom(_now())
        sent = time.monotonic()
        self.channel.submit(u, max(deadline.left(), 30.0))
        res.publish_ms = (time.monotonic() - sent) * 1000
        log.info("client %s: round %d %s (%d examples, fetch %.0f ms, train %.0f ms, send %.0f ms)",
                 self.client_id, res.round, res.status, res.examples, res.fetch_ms, res.train_ms, res.publish_ms)
        return m, res

    def work(self, m: pb.GlobalModel, fit: bool, ev: bool, residual: Optional[tensors.Residual]) -> tuple[RoundResult, pb.Update]:
        specs = tensors.specs_of(m.params)
        try:
            params = [tensors.to_array(t) for t in m.params]
        except ValueError as e:
            raise ShapeMismatch(f"global model of round {m.round}: {e}") from None
        cfg = train_config(m, self.client_id)
        mine = self.client.get_parameters(cfg)
        if mine is not None:
            tensors.check_shapes([np.asarray(a) for a in mine], specs,
                                 f"the job's model of round {m.round} does not fit this client's model "
                                 "(get_parameters)")
        res = RoundResult(m.round, TRAINED if fit else EVALUATED)
        eval_metrics: Metrics = {}
        if ev:
            out = self.client.evaluate([p.copy() for p in params], dict(cfg))
            if not isinstance(out, tuple) or len(out) != 3:
                raise FitResultError("evaluate must return (loss, num_examples, metrics)")
            loss, n, em = out
            n = _examples(n, "evaluate")
            em = _metrics(em, "evaluate")
            res.eval_loss, res.eval_metrics = float(loss), em
            eval_metrics = {"eval_loss": float(loss), "eval_examples": float(n)}
            for k, v in em.items():
                eval_metrics[k if k.startswith("eval_") else f"eval_{k}"] = v
            if not fit:
                u = pb.Update(job=m.job, client_id=self.client_id, base_round=m.round, evaluate_only=True,
                              num_examples=n, metrics=eval_metrics)
                return res, u
        train_start = _now()
        t0 = time.monotonic()
        fitted = self.client.fit([p.copy() for p in params], dict(cfg))
        res.train_ms = (time.monotonic() - t0) * 1000
        if not isinstance(fitted, tuple) or len(fitted) != 3:
            raise FitResultError("fit must return (parameters, num_examples, metrics)")
        new, n, fm = fitted
        if not isinstance(new, (list, tuple)):
            raise FitResultError(f"fit must return a list of arrays, got {type(new).__name__}")
        arrays = [np.asarray(a) for a in new]
        tensors.check_shapes(arrays, specs, f"fit's parameters for round {m.round}")
        local: list[np.ndarray] = []
        for a, s in zip(arrays, specs):
            f32 = a.astype(np.float32)
            if not np.all(np.isfinite(f32)):
                raise FitResultError(f"fit's parameters for round {m.round}: tensor {s.name!r} has non-finite values")
            local.append(f32)
        res.examples = _examples(n, "fit")
        res.metrics = _metrics(fm, "fit")
        u = pb.Update(job=m.job, client_id=self.client_id, base_round=m.round, num_examples=res.examples,
                      metrics={**res.metrics, **eval_metrics})
        u.timings.train_start.CopyFrom(train_start)
        u.timings.train_end.CopyFrom(_now())
        dtype = m.train_config.update_dtype
        compressed = dtype not in (pb.DTYPE_UNSPECIFIED, pb.DTYPE_FLOAT32)
        if getattr(m.train_config, "async") or compressed:
            # An asynchronous aggregator folds the step into a model that may
            # be versions ahead; compressed encodings keep small steps well.
            step = [lo - g for lo, g in zip(local, params)]
            if dtype == pb.DTYPE_SPARSE_FLOAT32:
                enc = residual if residual is not None else tensors.Residual()
                u.params.extend(enc.encode_topk(step, specs, m.train_config.topk_fraction))
            else:
                u.params.extend(tensors.encode_as(step, specs, dtype))
            u.is_delta = True
        else:
            u.params.extend(tensors.encode_as(local, specs, pb.DTYPE_FLOAT32))
        return res, u


def _verifier(model_public_key: Union[None, str, bytes, Path, Verifier]) -> Optional[Verifier]:
    if model_public_key is None or isinstance(model_public_key, Verifier):
        return model_public_key
    return Verifier.load(model_public_key)


def connect(*, broker: str, job: str, client_id: str, channel: str = "kafka", token: Optional[str] = None,
            model_public_key: Union[None, str, bytes, Path, Verifier] = None, tls: Optional[TLS] = None,
            kafka_properties: Optional[dict[str, Any]] = None, connect_timeout: float = 10.0,
            chunk_bytes: int = transfer.DEFAULT_CHUNK_BYTES) -> Channel:
    """Opens the channel a client reaches job's aggregator through."""
    rules.validate_job(job)
    rules.validate_client_id(client_id)
    if channel == "kafka":
        if tls is not None:
            raise ConfigError("tls is for the gRPC channel; pass librdkafka's ssl.* settings in kafka_properties")
        return KafkaChannel(broker, job, token=token, verifier=_verifier(model_public_key),
                            properties=kafka_properties, connect_timeout=connect_timeout, chunk_bytes=chunk_bytes)
    if channel == "grpc":
        if kafka_properties:
            raise ConfigError("kafka_properties are for the Kafka channel")
        return GrpcChannel(broker, job, client_id, token=token, tls=tls, connect_timeout=connect_timeout,
                           chunk_bytes=chunk_bytes)
    raise ConfigError(f"channel {channel!r}: want 'kafka' or 'grpc'")


def _summarize(s: Summary, ch: Channel) -> Summary:
    st = ch.stats
    s.messages_sent, s.messages_received = st.messages_sent, st.messages_received
    s.bytes_sent, s.bytes_received, s.records_rejected = st.bytes_sent, st.bytes_received, st.records_rejected
    s.models_bound, s.models_value_only = st.models_bound, st.models_value_only
    s.rejected = list(ch.rejections)
    return s


def _final(s: Summary, m: pb.GlobalModel) -> None:
    s.final = True
    s.final_parameters = [tensors.to_array(t) for t in m.params]
    s.final_metrics = dict(m.metrics)


def run_once(client: Client, *, broker: str, job: str, client_id: str, channel: str = "kafka",
             token: Optional[str] = None, model_public_key: Union[None, str, bytes, Path, Verifier] = None,
             tls: Optional[TLS] = None, kafka_properties: Optional[dict[str, Any]] = None,
             round: int = 0, timeout: float = 60.0, connect_timeout: float = 10.0,  # noqa: A002
             chunk_bytes: int = transfer.DEFAULT_CHUNK_BYTES) -> Summary:
    """Takes part in one round, as a serverless function does: fetch the
    newest model (at least ``round``), train if sampled, send the update.

    Raises BrokerUnavailable, JobNotFound (no model topic within
    ``timeout``), ModelTimeout, Unauthenticated, ShapeMismatch,
    FitResultError, or over gRPC the UpdateRejected subclass of the
    aggregator's reason.
    """
    s = Summary(job, client_id)
    ch = connect(broker=broker, job=job, client_id=client_id, channel=channel, token=token,
                 model_public_key=model_public_key, tls=tls, kafka_properties=kafka_properties,
                 connect_timeout=connect_timeout, chunk_bytes=chunk_bytes)
    try:
        m, res = Participant(client, ch, job, client_id).round(round, timeout, None)
        s.last_round = m.round
        if res is None:
            _final(s, m)
        else:
            s.rounds.append(res)
        return _summarize(s, ch)
    finally:
        ch.close()


def run_client(client: Client, *, broker: str, job: str, client_id: str, channel: str = "kafka",
               token: Optional[str] = None, model_public_key: Union[None, str, bytes, Path, Verifier] = None,
               tls: Optional[TLS] = None, kafka_properties: Optional[dict[str, Any]] = None,
               round_timeout: float = 600.0, timeout: Optional[float] = None, connect_timeout: float = 10.0,
               chunk_bytes: int = transfer.DEFAULT_CHUNK_BYTES, final_grace: float = 10.0) -> Summary:
    """Takes part in every round until the job's final model, and returns
    it in the summary (``final_parameters``).

    A gRPC aggregator stops serving once it has published the final model
    and the calls in flight have ended; a client that asks for the final
    model later finds no one. After the job's last round such a client
    retries for ``final_grace`` seconds (a restarted aggregator serves the
    final model again) and then returns with ``final_missed`` set.

    Waiting ``round_timeout`` seconds for a round's model without one is
    not an error: the client keeps waiting, until ``timeout`` (None: no
    limit) raises ModelTimeout. An update the aggregator refuses for a
    reason in ROUND_REJECTIONS ends that round (status
    ``rejected:<reason>``); any other refusal is raised. A transport that
    fails is reconnected with backoff until ``timeout``.
    """
    total = Deadline(timeout if timeout is not None else math.inf)
    s = Summary(job, client_id)
    residual = tensors.Residual()
    want = 0
    num_rounds = 0
    backoff = 0.2
    grace: Optional[Deadline] = None

    def gone() -> bool:
        """Whether the gRPC aggregator has gone for good after the last round."""
        nonlocal grace
        if channel != "grpc" or num_rounds <= 0 or want <= num_rounds:
            return False
        if grace is None:
            grace = Deadline(final_grace)
        if not grace.passed():
            return False
        log.warning("client %s: the aggregator stopped after round %d before this client had the final model",
                    client_id, num_rounds)
        s.final_missed = True
        return True

    while True:
        try:
            ch = connect(broker=broker, job=job, client_id=client_id, channel=channel, token=token,
                         model_public_key=model_public_key, tls=tls, kafka_properties=kafka_properties,
                         connect_timeout=min(connect_timeout, max(total.left(), 0.05)), chunk_bytes=chunk_bytes)
        except BrokerUnavailable as e:
            if gone():
                return s
            if total.passed() or total.left() < backoff:
                raise
            log.warning("client %s: %s; reconnecting in %.1f s", client_id, e, backoff)
            time.sleep(backoff)
            backoff = min(2 * backoff, 10.0)
            continue
        p = Participant(client, ch, job, client_id)
        try:
            while True:
                try:
                    m, res = p.round(want, min(round_timeout, total.left()), residual)
                except ModelTimeout:
                    if total.passed():
                        raise
                    log.info("client %s: no model of round %d yet, still waiting", client_id, want)
                    continue
                except UpdateRejected as e:
                    if not isinstance(e, ROUND_REJECTIONS):
                        raise
                    log.warning("client %s: update refused (%s); joining the next round", client_id, e)
                    base = e.base_round if e.base_round is not None else want
                    s.rounds.append(RoundResult(base, f"rejected:{e.reason}"))
                    want = max(want, base + 1)
                    continue
                backoff = 0.2
                grace = None
                s.last_round = m.round
                num_rounds = m.num_rounds
                if res is None:
                    _final(s, m)
                    log.info("client %s: job %s finished at round %d", client_id, job, m.round)
                    return _summarize(s, ch)
                s.rounds.append(res)
                want = m.round + 1
        except BrokerUnavailable as e:
            if gone():
                return _summarize(s, ch)
            if total.passed():
                raise
            log.warning("client %s: transport failed (%s); reconnecting", client_id, e)
        finally:
            _summarize(s, ch)
            ch.close()
