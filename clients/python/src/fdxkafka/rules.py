"""The federation's rules both sides must agree on (shared/rules): what a job
id and a client id may be, and what a reader checks of a global model."""

from __future__ import annotations

import re

from ._pb.fdx.v1 import fdx_pb2 as pb
from .errors import ConfigError

MAX_CLIENT_ID_LEN = 128
MAX_ROUNDS = 1 << 20
_JOB = re.compile(r"[A-Za-z0-9._-]{1,128}")


def validate_job(job: str) -> None:
    if not isinstance(job, str) or not _JOB.fullmatch(job):
        raise ConfigError(f"job id {job!r}: want 1-128 characters of [A-Za-z0-9._-]")


def validate_client_id(client_id: str) -> None:
    if not isinstance(client_id, str) or not 1 <= len(client_id.encode()) <= MAX_CLIENT_ID_LEN:
        raise ConfigError(f"client id {client_id!r}: want 1 to {MAX_CLIENT_ID_LEN} bytes")


def model_topic(job: str) -> str:
    return f"fdx.{job}.model"


def updates_topic(job: str) -> str:
    return f"fdx.{job}.updates"


def check_model(m: pb.GlobalModel, job: str) -> str | None:
    """Why a model may not be used (None if it may): it must belong to job
    and have a round inside it (1 to num_rounds+1, the final model's)."""
    if m.job != job:
        return f"model of job {m.job!r}, want {job!r}"
    n = m.num_rounds
    if n < 0 or n > MAX_ROUNDS:
        return f"model claims {n} rounds in its job, want 0 to {MAX_ROUNDS}"
    limit = n + 1 if n > 0 else MAX_ROUNDS + 1
    if not 1 <= m.round <= limit:
        return f"model round {m.round} outside the job's 1 to {limit}"
    if m.final and n > 0 and m.round != n + 1:
        return f"final model of round {m.round} in a job of {n} rounds"
    return None
