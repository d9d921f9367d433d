"""Typed errors of the fdxkafka client.

Everything the client raises derives from :class:`FdxError`, so that a
caller never sees a Kafka or gRPC library exception for a condition it can
act on: the broker or aggregator is down (:class:`BrokerUnavailable`), the
job does not exist (:class:`JobNotFound`), no model came in time
(:class:`ModelTimeout`), the model does not fit the user's model
(:class:`ShapeMismatch`), credentials were refused (:class:`Unauthenticated`),
or the aggregator refused an update for one of its reasons (a subclass of
:class:`UpdateRejected`, one per ``fdx.v1.RejectReason``).
"""

from __future__ import annotations

from typing import ClassVar, Dict, Optional, Type


class FdxError(Exception):
    """Base of every error this package raises."""


class ConfigError(FdxError, ValueError):
    """An argument is malformed (job id, client id, key file, channel)."""


class BrokerUnavailable(FdxError, ConnectionError):
    """No Kafka broker, or the gRPC aggregator, answered before the deadline."""


class JobNotFound(FdxError, LookupError):
    """No aggregator runs this job: its model topic does not exist, or the
    gRPC aggregator runs another job."""


class ModelTimeout(FdxError, TimeoutError):
    """No (verified) model of the wanted round arrived before the deadline."""


class Unauthenticated(FdxError, PermissionError):
    """The transport refused this client's credentials (bearer token, SASL,
    TLS client certificate)."""


class ShapeMismatch(FdxError, ValueError):
    """A model and the user's model disagree: the global model's tensors do not
    have the shapes the client's ``get_parameters`` gives, or ``fit``
    returned arrays of other shapes than the model it was given."""


class TransferError(FdxError):
    """A chunked transfer could not be reassembled (missing chunks, bad
    checksum)."""


class UpdateRejected(FdxError):
    """The aggregator refused an update. Over gRPC the refusal is synchronous
    and raised as the subclass of its reason; over Kafka updates are
    fire-and-forget and refusals only show in the aggregator's counts.

    Attributes:
        reason: the stable label, e.g. ``"stale_round"``.
        detail: the aggregator's explanation.
        round: the round the aggregator was collecting, when it said.
    """

    reason: ClassVar[str] = "unspecified"
    wire: ClassVar[int] = 0

    def __init__(self, detail: str = "", round: Optional[int] = None) -> None:  # noqa: A002
        self.detail = detail
        self.round = round
        # The round the refused update trained on, when the sender knows it.
        self.base_round: Optional[int] = None
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)

    @staticmethod
    def from_wire(reject_reason: int, detail: str = "", round: Optional[int] = None) -> "UpdateRejected":  # noqa: A002
        """The exception for a wire ``RejectReason`` (an unknown value gives
        the base class)."""
        cls = _BY_WIRE.get(reject_reason, UpdateRejected)
        prefix = cls.reason + ": "
        if detail.startswith(prefix):
            detail = detail[len(prefix):]
        return cls(detail, round)


class Undecodable(UpdateRejected):
    """The record is not an Update."""

    reason = "undecodable"
    wire = 1


class WrongJob(UpdateRejected):
    reason = "wrong_job"
    wire = 2


class BadClientID(UpdateRejected):
    """Empty or over-long client id."""

    reason = "bad_client_id"
    wire = 3


class UnknownClient(UpdateRejected):
    """Not in the job's client list."""

    reason = "unknown_client"
    wire = 4


class StaleRound(UpdateRejected):
    """Trained on a round that is already closed: join the next one."""

    reason = "stale_round"
    wire = 5


class FutureRound(UpdateRejected):
    reason = "future_round"
    wire = 6


class Duplicate(UpdateRejected):
    """The client already contributed to the open round."""

    reason = "duplicate"
    wire = 7


class BadNumExamples(UpdateRejected):
    """More examples claimed than the client's shard holds, or fewer than one."""

    reason = "bad_num_examples"
    wire = 8


class WrongShape(UpdateRejected):
    reason = "wrong_shape"
    wire = 9


class NonFinite(UpdateRejected):
    reason = "non_finite"
    wire = 10


class NormBound(UpdateRejected):
    """||local - global|| above the job's bound."""

    reason = "norm_bound"
    wire = 11


class Oversize(UpdateRejected):
    reason = "oversize"
    wire = 12


class OutOfRange(UpdateRejected):
    reason = "out_of_range"
    wire = 13


class NotStored(UpdateRejected):
    """The aggregator could not store the update durably; it may be sent again."""

    reason = "not_stored"
    wire = 14


class UnauthenticatedUpdate(UpdateRejected, Unauthenticated):
    """The update's credentials (token, MAC) do not verify for its client id."""

    reason = "unauthenticated"
    wire = 15


class NotSampled(UpdateRejected):
    """The client is not in the round's sample."""

    reason = "not_sampled"
    wire = 16


class Incomplete(UpdateRejected):
    """A chunked transfer lacks chunks."""

    reason = "incomplete"
    wire = 17


class ChecksumMismatch(UpdateRejected):
    """A chunk, or the reassembled whole, does not match its manifest."""

    reason = "checksum"
    wire = 18


REJECTIONS: tuple[Type[UpdateRejected], ...] = (
    Undecodable, WrongJob, BadClientID, UnknownClient, StaleRound, FutureRound, Duplicate,
    BadNumExamples, WrongShape, NonFinite, NormBound, Oversize, OutOfRange, NotStored,
    UnauthenticatedUpdate, NotSampled, Incomplete, ChecksumMismatch,
)
"""One class per ``fdx.v1.RejectReason`` but UNSPECIFIED, in wire order."""

_BY_WIRE: Dict[int, Type[UpdateRejected]] = {c.wire: c for c in REJECTIONS}
