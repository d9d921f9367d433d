"""The gRPC channel (shared/grpcchan, client side): models arrive on a
GetModelChunks stream (whole, or a manifest and its chunks), updates go by
SubmitUpdate or, above the chunk size, SubmitUpdateChunks; the aggregator's
verdict comes back with the call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import grpc
from google.protobuf.message import DecodeError

from . import rules, transfer
from ._pb.fdx.v1 import fdx_pb2 as pb
from ._pb.fdx.v1 import fdx_pb2_grpc as pbg
from .channel import Deadline, Stats
from .errors import (BrokerUnavailable, ConfigError, FdxError, JobNotFound, ModelTimeout, TransferError,
                     Unauthenticated, UpdateRejected)

log = logging.getLogger("fdxkafka.grpc")

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_PART_OVERHEAD = 64


@dataclass(frozen=True)
class TLS:
    """TLS settings for the gRPC channel (PEM files).

    Attributes:
        ca_file: CAs that may sign the aggregator's certificate (None: the
            system roots).
        cert_file, key_file: this client's certificate, for mutual TLS.
        server_name: the name to check the aggregator's certificate against
            instead of the dialed host.
    """

    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    server_name: Optional[str] = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("client TLS: a client certificate needs both a certificate file and a key file")

        def read(p: Optional[str]) -> Optional[bytes]:
            if p is None:
                return None
            try:
                return Path(p).read_bytes()
            except OSError as e:
                raise ConfigError(f"client TLS: {e}") from None

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


def _classify(e: grpc.RpcError, what: str) -> FdxError:
    code = e.code() if hasattr(e, "code") else None
    detail = e.details() if hasattr(e, "details") else str(e)
    msg = f"{what}: {detail}"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return Unauthenticated(msg)
    if code == grpc.StatusCode.NOT_FOUND:
        return JobNotFound(msg)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ModelTimeout(msg)
    if code == grpc.StatusCode.UNAVAILABLE:
        return BrokerUnavailable(msg)
    return FdxError(f"{msg} ({code})")


class GrpcChannel:
    """A participant's gRPC channel to one job's aggregator.

    Args:
        address: the aggregator's host:port.
        job, client_id: who asks.
        token: sent as ``authorization: Bearer <token>`` on every call.
        tls: TLS settings; None dials plaintext.
        connect_timeout: seconds the health check may take.
    """

    def __init__(self, address: str, job: str, client_id: str, *, token: Optional[str] = None,
                 tls: Optional[TLS] = None, connect_timeout: float = 10.0,
                 max_message_bytes: int = 64 << 20, chunk_bytes: int = transfer.DEFAULT_CHUNK_BYTES,
                 max_model_bytes: int = transfer.MAX_TRANSFER_BYTES) -> None:
        if not address:
            raise ConfigError("grpc: no aggregator address")
        rules.validate_job(job)
        rules.validate_client_id(client_id)
        self.job, self.client_id, self.address = job, client_id, address
        self._chunk = min(chunk_bytes, max_message_bytes - _PART_OVERHEAD)
        if self._chunk < 1024:
            raise ConfigError(f"grpc: message limit of {max_message_bytes} bytes leaves no room for chunks")
        self._max_model = max_model_bytes
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.stats = Stats()
        self.rejections: list[str] = []
        self._newest: Optional[pb.GlobalModel] = None
        options: list[tuple[str, Any]] = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        if tls is not None and tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        if tls is not None:
            self._conn = grpc.secure_channel(address, tls.credentials(), options=options)
        else:
            self._conn = grpc.insecure_channel(address, options=options)
        self._api = pbg.AggregatorStub(self._conn)
        try:
            # Health checks need no token; any answer means it is there.
            self._conn.unary_unary(_HEALTH_CHECK, request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)(b"", timeout=connect_timeout, wait_for_ready=True)
        except grpc.RpcError as e:
            self._conn.close()
            err = _classify(e, f"grpc aggregator {address}")
            if isinstance(err, ModelTimeout):
                err = BrokerUnavailable(f"grpc aggregator {address}: no answer in {connect_timeout:g} s")
            raise err from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "GrpcChannel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def model(self, min_round: int, timeout: float) -> pb.GlobalModel:
        deadline = Deadline(timeout)
        while True:
            req = pb.GetModelRequest(job=self.job, min_round=min_round, client_id=self.client_id)
            try:
                m = self._model_chunks(req, deadline.left())
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    m = self._unary_model(req, deadline.left())
                else:
                    err = _classify(e, f"get model round {min_round}")
                    if isinstance(err, ModelTimeout):
                        err = ModelTimeout(f"no model of round {min_round} or later from {self.address} within {timeout:g} s")
                    raise err from None
            why = rules.check_model(m, self.job)
            if why is None and self._newest is not None and m.round < self._newest.round:
                why = f"round {m.round} is older than round {self._newest.round} already read"
            if why is None:
                self._newest = m
                return m
            self.stats.records_rejected += 1
            self.rejections.append(why)
            log.warning("model ignored: %s", why)
            if deadline.passed():
                raise ModelTimeout(f"no usable model of round {min_round} or later from {self.address}: {why}")

    def _unary_model(self, req: pb.GetModelRequest, timeout: float) -> pb.GlobalModel:
        try:
            m: pb.GlobalModel = self._api.GetModel(req, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _classify(e, f"get model round {req.min_round}") from None
        self.stats.received(m.ByteSize())
        return m

    def _model_chunks(self, req: pb.GetModelRequest, timeout: float) -> pb.GlobalModel:
        stream = self._api.GetModelChunks(req, timeout=timeout, metadata=self._metadata)
        try:
            whole = self._receive(stream)
        finally:
            stream.cancel()
        m = pb.GlobalModel()
        try:
            m.ParseFromString(whole)
        except DecodeError as e:
            raise TransferError(f"decode model of {len(whole)} bytes: {e}") from None
        return m

    def _receive(self, stream: Iterator[pb.TransferPart]) -> bytes:
        first = next(stream, None)
        if first is None:
            raise TransferError("model stream ended before the manifest")
        self.stats.received(first.ByteSize())
        kind = first.WhichOneof("part")
        if kind == "whole":
            if len(first.whole) > self._max_model:
                raise TransferError(f"model of {len(first.whole)} bytes, over the limit {self._max_model}")
            return first.whole
        if kind != "manifest":
            raise TransferError("model transfer does not start with a manifest")
        man = first.manifest
        if man.total_size > self._max_model:
            raise TransferError(f"model of {man.total_size} bytes, over the limit {self._max_model}")
        chunks: dict[int, bytes] = {}
        for i in range(man.chunk_count):
            p = next(stream, None)
            if p is None:
                raise TransferError(f"transfer {man.transfer_id}: stream ended after {i} of {man.chunk_count} chunks")
            self.stats.received(p.ByteSize())
            if p.WhichOneof("part") != "chunk":
                raise TransferError(f"transfer {man.transfer_id}: part {i + 1} is not a chunk")
            chunks[i] = p.chunk
        return transfer.assemble(man, chunks)

    def submit(self, update: pb.Update, timeout: float) -> None:
        size = update.ByteSize()
        try:
            if size > self._chunk:
                x = transfer.split(update.SerializeToString(), self._chunk)
                resp = self._api.SubmitUpdateChunks(self._parts(x), timeout=timeout, metadata=self._metadata)
            else:
                resp = self._api.SubmitUpdate(update, timeout=timeout, metadata=self._metadata)
                self.stats.sent(size)
        except grpc.RpcError as e:
            err = _classify(e, f"submit update round {update.base_round}")
            if isinstance(err, Unauthenticated):
                err = UpdateRejected.from_wire(pb.REJECT_REASON_UNAUTHENTICATED, err.args[0], None)
                err.base_round = update.base_round
            raise err from None
        self.stats.received(resp.ByteSize())
        if not resp.accepted:
            rej = UpdateRejected.from_wire(resp.reject_reason, resp.reason, resp.round)
            rej.base_round = update.base_round
            raise rej

    def _parts(self, x: transfer.Outgoing) -> Iterator[pb.TransferPart]:
        if x.count == 1:
            p = pb.TransferPart(whole=x.whole)
            self.stats.sent(p.ByteSize())
            yield p
            return
        p = pb.TransferPart(manifest=x.manifest)
        self.stats.sent(p.ByteSize())
        yield p
        for i in range(x.count):
            p = pb.TransferPart(chunk=x.chunk(i))
            self.stats.sent(p.ByteSize())
            yield p
