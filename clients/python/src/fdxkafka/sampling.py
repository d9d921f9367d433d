"""Who takes part in a round (shared/rules/sample.go): client c is asked to
train (or evaluate) iff its SampleHash for the round and role is at most the
threshold the model record publishes, so a client tests its own membership
without a list."""

from __future__ import annotations

import hashlib
import struct

from ._pb.fdx.v1 import fdx_pb2 as pb

ROLE_FIT = "fit"
ROLE_EVALUATE = "evaluate"


def sample_hash(seed: int, round: int, role: str, client_id: str) -> int:  # noqa: A002
    """First eight bytes (big-endian) of SHA-256(seed ‖ round ‖ role 0x00 client_id),
    seed and round as big-endian 64-bit integers."""
    h = hashlib.sha256()
    h.update(struct.pack(">QQ", seed & (2**64 - 1), round & (2**64 - 1)))
    h.update(role.encode())
    h.update(b"\x00")
    h.update(client_id.encode())
    return int.from_bytes(h.digest()[:8], "big")


def sampled(model: pb.GlobalModel, role: str, client_id: str) -> bool:
    """Whether client_id is asked to train (ROLE_FIT) or evaluate
    (ROLE_EVALUATE) in model's round. Without a Sampling every client trains
    and none evaluates."""
    if not model.HasField("sampling"):
        return role == ROLE_FIT
    s = model.sampling
    h = sample_hash(s.seed, model.round, role, client_id)
    if role == ROLE_FIT:
        return s.fit_count > 0 and h <= s.fit_threshold
    if role == ROLE_EVALUATE:
        return s.evaluate_count > 0 and h <= s.evaluate_threshold
    return False
