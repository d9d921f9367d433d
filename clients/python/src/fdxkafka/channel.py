"""What both channels (Kafka, gRPC) offer the round logic."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from ._pb.fdx.v1 import fdx_pb2 as pb


@dataclass
class Stats:
    """Traffic of one channel client. On Kafka a message is a record produced
    or fetched; on gRPC a message sent or received on a stream.
    records_rejected counts models read and ignored (unsigned, forged,
    replayed, of another job)."""

    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    records_rejected: int = 0
    # Verified models read on Kafka: signed with job, topic, round and
    # final bound (v2), or over the value alone (Verifier.allow_value_only).
    models_bound: int = 0
    models_value_only: int = 0

    def sent(self, n: int) -> None:
        self.messages_sent += 1
        self.bytes_sent += n

    def received(self, n: int) -> None:
        self.messages_received += 1
        self.bytes_received += n


class Channel(Protocol):
    """A participant's view of a channel."""

    stats: Stats
    rejections: list[str]

    def model(self, min_round: int, timeout: float) -> pb.GlobalModel:
        """The newest model of the job whose round is at least min_round (or a
        final one), waiting up to timeout seconds; raises ModelTimeout,
        JobNotFound, BrokerUnavailable or Unauthenticated."""
        ...

    def submit(self, update: pb.Update, timeout: float) -> None:
        """Delivers an update: acknowledged by the brokers (Kafka) or accepted
        by the aggregator (gRPC, which raises its UpdateRejected otherwise)."""
        ...

    def close(self) -> None:
        ...


class Deadline:
    """A point in time on the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def passed(self) -> bool:
        return time.monotonic() >= self.at
