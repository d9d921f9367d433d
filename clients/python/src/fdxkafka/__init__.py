"""fdxkafka: take part in an FDxKafka federated job from Python.

A user's model is a :class:`Client` (Flower's NumPyClient habit: ``fit``
and optionally ``evaluate`` on lists of NumPy arrays); :func:`run_client`
takes part in every round of a job run by the Go aggregator until its final
model, over Kafka or gRPC, and :func:`run_once` in one round (serverless).
The wire format is proto/fdx/v1, with the same signatures, MACs, chunking
and sampling rules as the Go client.
"""

from .client import (ROUND_REJECTIONS, Client, FitResultError, RoundResult, Summary, client_seed, connect,
                     partition_spec, run_client, run_once, train_config)
from .errors import (REJECTIONS, BadClientID, BadNumExamples, BrokerUnavailable, ChecksumMismatch, ConfigError,
                     Duplicate, FdxError, FutureRound, Incomplete, JobNotFound, ModelTimeout, NonFinite, NormBound,
                     NotSampled, NotStored, OutOfRange, Oversize, ShapeMismatch, StaleRound, TransferError,
                     Unauthenticated, UnauthenticatedUpdate, Undecodable, UnknownClient, UpdateRejected, WrongJob,
                     WrongShape)
from .grpc_channel import TLS
from .trust import Verifier

__all__ = [
    "Client", "run_client", "run_once", "connect", "RoundResult", "Summary", "TLS", "Verifier",
    "train_config", "partition_spec", "client_seed", "ROUND_REJECTIONS", "REJECTIONS",
    "FdxError", "ConfigError", "BrokerUnavailable", "JobNotFound", "ModelTimeout", "Unauthenticated",
    "ShapeMismatch", "FitResultError", "TransferError", "UpdateRejected",
    "Undecodable", "WrongJob", "BadClientID", "UnknownClient", "StaleRound", "FutureRound", "Duplicate",
    "BadNumExamples", "WrongShape", "NonFinite", "NormBound", "Oversize", "OutOfRange", "NotStored",
    "UnauthenticatedUpdate", "NotSampled", "Incomplete", "ChecksumMismatch",
]

__version__ = "0.1.0"
