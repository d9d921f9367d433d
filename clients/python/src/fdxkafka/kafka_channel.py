"""The Kafka channel (shared/kafkachan, client side): read the newest
committed model of fdx.<job>.model (read_committed, one partition), verify
it, and produce updates keyed by client id to fdx.<job>.updates.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional, Union

import confluent_kafka as ck
from google.protobuf.message import DecodeError

from . import rules, transfer, trust
from ._pb.fdx.v1 import fdx_pb2 as pb
from .channel import Deadline, Stats
from .errors import BrokerUnavailable, ConfigError, JobNotFound, ModelTimeout, Oversize, TransferError, Unauthenticated

log = logging.getLogger("fdxkafka.kafka")

_POLL = 0.1
_CLIENT_FETCH_WAIT_MS = 500
_SPREAD_TIMEOUT = 60.0

_AUTH_CODES = {
    getattr(ck.KafkaError, name) for name in (
        "_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED", "TOPIC_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
    ) if hasattr(ck.KafkaError, name)
}
# The Python binding wants a group.id, and librdkafka then looks up the
# group's coordinator, though the reader only assigns partitions and never
# commits. A client principal has no rights on any group (kafka.sh acls):
# that refusal concerns nothing the client does.
_GROUP_DENIED = ck.KafkaError.GROUP_AUTHORIZATION_FAILED
_SIZE_CODES = {
    getattr(ck.KafkaError, name) for name in ("MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE") if hasattr(ck.KafkaError, name)
}
_DOWN_CODES = {ck.KafkaError._TRANSPORT, ck.KafkaError._ALL_BROKERS_DOWN, ck.KafkaError._TIMED_OUT,
               ck.KafkaError._RESOLVE, ck.KafkaError._MSG_TIMED_OUT}


Headers = list[tuple[str, Union[str, bytes, None]]]


def _header(msg: Any, key: str) -> Optional[bytes]:
    for k, v in msg.headers() or ():
        if k == key:
            return v if v is not None else b""
    return None


class _Rejected(Exception):
    """A model record not to use; need, for an incomplete chunked model, is
    where its chunks would start."""

    def __init__(self, why: str, need: int = -1) -> None:
        super().__init__(why)
        self.need = need


class KafkaChannel:
    """A participant's Kafka channel for one job.

    Args:
        brokers: the Kafka bootstrap list.
        job: the job id.
        token: keys the HMAC (``fdx-mac``) of every update and update chunk.
        verifier: checks every model record's signature (v2 binding);
            records that do not verify are ignored. None trusts models as
            read.
        properties: extra librdkafka settings (SASL, TLS), applied last.
        connect_timeout: seconds to wait for the brokers to answer.
        chunk_bytes: size above which an update goes in chunks.
    """

    def __init__(self, brokers: str, job: str, *, token: Optional[str] = None,
                 verifier: Optional[trust.Verifier] = None, properties: Optional[dict[str, Any]] = None,
                 connect_timeout: float = 10.0, chunk_bytes: int = transfer.DEFAULT_CHUNK_BYTES,
                 max_message_bytes: int = 64 << 20) -> None:
        if not brokers or not brokers.strip():
            raise ConfigError("kafka: no brokers given")
        rules.validate_job(job)
        if not 1024 <= chunk_bytes <= max_message_bytes:
            raise ConfigError(f"chunk size {chunk_bytes}: want 1024 to {max_message_bytes}")
        self.job, self.brokers = job, brokers
        self.topic = rules.model_topic(job)
        self._token, self._verifier, self._chunk = token, verifier, chunk_bytes
        self.stats = Stats()
        self.rejections: list[str] = []
        self._errors: list[ck.KafkaError] = []
        self._lock = threading.Lock()
        base: dict[str, Any] = {
            "bootstrap.servers": brokers,
            "log_level": 3,
            "logger": logging.getLogger("fdxkafka.librdkafka"),
            "error_cb": self._on_error,
            "socket.keepalive.enable": True,
            "reconnect.backoff.ms": 20,
            "log.connection.close": False,
        }
        extra = dict(properties or {})
        self._producer: Optional[ck.Producer] = ck.Producer({
            **base,
            # As the Go client: no idempotence (one more round trip per cold
            # start; a duplicate is rejected by the aggregator), acks=all.
            "enable.idempotence": False,
            "acks": "all",
            "linger.ms": 0,
            # A record batch of several chunks could exceed the topic's
            # max.message.bytes, which bounds batches, not records: a chunk
            # fills a batch by itself.
            "batch.size": chunk_bytes,
            "message.max.bytes": max_message_bytes,
            "compression.type": "none",
            "delivery.timeout.ms": 120000,
            **extra,
        })
        self._consumer_conf = {
            **base,
            # Assigned, never subscribed: the group is never joined, and
            # refusals of it are ignored (_GROUP_DENIED).
            "group.id": f"fdx.{job}.reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": _CLIENT_FETCH_WAIT_MS,
            "max.partition.fetch.bytes": max_message_bytes,
            "fetch.max.bytes": max_message_bytes * 2,
            "receive.message.max.bytes": max_message_bytes * 2 + (1 << 20),
            **extra,
        }
        self._consumer: Optional[ck.Consumer] = ck.Consumer(self._consumer_conf)
        self._positional: Optional[ck.Consumer] = None
        self._started = False
        self._newest: Optional[pb.GlobalModel] = None
        # Chunks of the model transfer being read (partition 0), the spread
        # chunks passed on partition 0 (by offset), and where the chunks of
        # an incomplete model would start.
        self._pending: Optional[transfer.Pending] = None
        self._held: dict[int, Any] = {}
        self._held_id = ""
        self._need = -1
        self._from = 0
        try:
            self._probe(Deadline(connect_timeout))
        except BaseException:
            self.close()
            raise

    # -- connection ---------------------------------------------------------

    def _on_error(self, err: ck.KafkaError) -> None:
        if err.code() == _GROUP_DENIED:
            return
        with self._lock:
            self._errors.append(err)
            del self._errors[:-16]

    def _auth_error(self) -> Optional[ck.KafkaError]:
        with self._lock:
            return next((e for e in self._errors if e.code() in _AUTH_CODES), None)

    def _last_error(self) -> str:
        with self._lock:
            return f" (last broker error: {self._errors[-1].str()})" if self._errors else ""

    def _probe(self, deadline: Deadline) -> None:
        """Waits until the brokers answer a metadata request."""
        assert self._producer is not None
        while True:
            try:
                self._producer.list_topics(timeout=max(0.05, min(0.5, deadline.left())))
                return
            except ck.KafkaException as e:
                err = e.args[0]
            # A failed SASL handshake shows only in the error callback, which
            # poll serves; list_topics reports a transport failure.
            self._producer.poll(0)
            if (auth := self._auth_error()) is not None:
                raise Unauthenticated(f"kafka brokers {self.brokers}: {auth.str()}")
            if deadline.passed():
                raise BrokerUnavailable(f"kafka brokers {self.brokers}: no answer: {err.str()}{self._last_error()}")

    def close(self) -> None:
        """Flushes what is queued (5 s at most) and closes the connections."""
        p, self._producer = getattr(self, "_producer", None), None
        if p is not None:
            p.flush(5)
        for c in (getattr(self, "_consumer", None), getattr(self, "_positional", None)):
            if c is not None:
                try:
                    c.close()
                except (ck.KafkaException, RuntimeError):
                    pass
        self._consumer = self._positional = None

    def __enter__(self) -> "KafkaChannel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- models -------------------------------------------------------------

    def model(self, min_round: int, timeout: float) -> pb.GlobalModel:
        deadline = Deadline(timeout)
        if not self._started:
            self._latest(deadline)
        while True:
            m = self._newest
            if m is not None and (m.round >= min_round or m.final):
                return m
            if deadline.passed():
                raise ModelTimeout(f"no model of round {min_round} or later on {self.topic} within {timeout:g} s"
                                   + self._rejected_note())
            self._poll(min(_POLL, deadline.left()))

    def _rejected_note(self) -> str:
        if not self.rejections:
            return ""
        return f" ({len(self.rejections)} records ignored, the last: {self.rejections[-1]})"

    def _watermarks(self, deadline: Deadline) -> tuple[int, int]:
        """The model topic's low and high watermarks (for read_committed, the
        last stable offset), waiting for the topic to exist until deadline."""
        assert self._consumer is not None
        while True:
            try:
                md = self._consumer.list_topics(self.topic, timeout=max(0.05, min(5.0, deadline.left())))
                t = md.topics.get(self.topic)
                err = t.error if t is not None else None
                if err is None and t is not None and 0 in t.partitions:
                    low, high = self._consumer.get_watermark_offsets(
                        ck.TopicPartition(self.topic, 0), timeout=max(0.05, min(5.0, deadline.left())), cached=False)
                    return int(low), int(high)
                if err is not None and err.code() in _AUTH_CODES:
                    raise Unauthenticated(f"read {self.topic}: {err.str()}")
            except ck.KafkaException as e:
                err = e.args[0]
                if err.code() in _AUTH_CODES:
                    raise Unauthenticated(f"read {self.topic}: {err.str()}") from None
                if err.code() in _DOWN_CODES and deadline.passed():
                    raise BrokerUnavailable(f"read {self.topic}: {err.str()}{self._last_error()}") from None
                if err.code() not in (ck.KafkaError._UNKNOWN_PARTITION, ck.KafkaError.UNKNOWN_TOPIC_OR_PART) \
                        and err.code() not in _DOWN_CODES:
                    raise BrokerUnavailable(f"read {self.topic}: {err.str()}") from None
            if (auth := self._auth_error()) is not None:
                raise Unauthenticated(f"read {self.topic}: {auth.str()}")
            if deadline.passed():
                raise JobNotFound(f"job {self.job!r}: no topic {self.topic} on {self.brokers} "
                                  "(no aggregator created it)")
            threading.Event().wait(min(0.2, deadline.left()))

    def _latest(self, deadline: Deadline) -> None:
        """Reads the newest committed model, seeking close to the end and
        widening the window backwards until it finds one: transaction markers
        and aborted records hold offsets that read_committed skips, and a
        chunked model's manifest is its last record."""
        low, high = self._watermarks(deadline)
        self._started = True
        if high <= low:
            self._assign(high)
            return
        back = 2
        while True:
            start = max(low, high - back)
            self._pending, self._need = None, -1
            self._held.clear()
            found = self._read_to_end(start, high, deadline)
            if found or start == low:
                return
            back = high - self._need if 0 <= self._need < start else back * 4

    def _assign(self, offset: int) -> None:
        assert self._consumer is not None
        self._consumer.assign([ck.TopicPartition(self.topic, 0, offset)])

    def _read_to_end(self, start: int, high: int, deadline: Deadline) -> bool:
        """Reads from start to the high watermark queried just before; whether
        a model was found. Every model is written in a round transaction, so
        the partition ends with its commit marker at high-1, which
        read_committed never delivers: once the record at high-2 is read,
        only what is already queued behind it is drained."""
        self._assign(start)
        self._from = start
        before = self._newest
        wait = _POLL
        while True:
            if deadline.passed():
                raise ModelTimeout(f"reading {self.topic} from offset {start}: the deadline passed")
            at, eof = self._poll(wait)
            if eof or (wait == 0 and at < 0) or at >= high - 1:
                return self._newest is not before
            if at >= high - 2:
                wait = 0

    def _poll(self, wait: float) -> tuple[int, bool]:
        """Reads one record: its offset (-1 if none) and whether the partition
        end was reached."""
        assert self._consumer is not None
        msg = self._consumer.poll(wait)
        if msg is None:
            return -1, False
        err = msg.error()
        if err is not None:
            if err.code() == ck.KafkaError._PARTITION_EOF:
                return -1, True
            if err.code() == _GROUP_DENIED:
                return -1, False
            if err.code() in _AUTH_CODES:
                raise Unauthenticated(f"read {self.topic}: {err.str()}")
            if err.fatal():
                raise BrokerUnavailable(f"read {self.topic}: {err.str()}")
            log.debug("kafka consumer error on %s: %s", self.topic, err.str())
            return -1, False
        at = int(msg.offset() or 0)
        value = msg.value() or b""
        self.stats.received(len(value) + len(msg.key() or b""))
        self._take(msg, at)
        return at, False

    def _reject(self, at: int, why: str) -> None:
        self.stats.records_rejected += 1
        self.rejections.append(f"offset {at}: {why}")
        del self.rejections[:-32]
        log.warning("model record ignored: topic %s offset %d: %s", self.topic, at, why)

    def _take(self, msg: Any, at: int) -> None:
        if _header(msg, transfer.HEADER_SPREAD) is not None:
            tid = (_header(msg, transfer.HEADER_TRANSFER) or b"").decode("ascii", "replace")
            if tid != self._held_id:
                self._held.clear()
                self._held_id = tid
            if len(self._held) < transfer.MAX_CHUNKS:
                self._held[at] = msg
            return
        if _header(msg, transfer.HEADER_CHUNK) is not None:
            self._add_chunk(msg, at)
            return
        try:
            m = self._decode(msg, at)
        except _Rejected as e:
            if e.need >= 0 and e.need < self._from:
                return  # its chunks precede the window: _latest reads them next
            self._reject(at, str(e))
            return
        if self._newest is not None and m.round < self._newest.round:
            self._reject(at, f"round {m.round} is older than round {self._newest.round} already read")
            return
        self._newest = m

    def _add_chunk(self, msg: Any, at: int) -> None:
        tid = (_header(msg, transfer.HEADER_TRANSFER) or b"").decode("ascii", "replace")
        try:
            i, n, total = transfer.parse_chunk_header(_header(msg, transfer.HEADER_CHUNK))
        except TransferError as e:
            self._reject(at, str(e))
            return
        p = self._pending
        if p is None or p.transfer_id != tid:
            if total > transfer.MAX_TRANSFER_BYTES:
                self._reject(at, f"transfer {tid} of {total} bytes")
                return
            p = self._pending = transfer.Pending(tid, n, total, at)
        if (n, total) != (p.count, p.total):
            self._reject(at, f"transfer {tid}: chunk headers disagree")
            self._pending = None
            return
        p.chunks[i] = msg.value() or b""

    def _decode(self, msg: Any, at: int) -> pb.GlobalModel:
        """The model a record holds, if it is one to trust: its signature
        verifies (with a verifier), it decodes, says what the signature
        binds, and belongs to the job with a round inside it."""
        value = msg.value() or b""
        claims = None
        if self._verifier is not None:
            headers = {k: (v if v is not None else b"") for k, v in reversed(msg.headers() or ())}
            try:
                claims = self._verifier.verify_record(self.job, self.topic, value, headers)
            except trust.VerificationError as e:
                raise _Rejected(f"signature: {e}") from None
        if _header(msg, transfer.HEADER_MANIFEST) is not None:
            value = self._whole(value, at)
        if not value:
            raise _Rejected("empty record")
        m = pb.GlobalModel()
        try:
            m.ParseFromString(value)
        except DecodeError as e:
            raise _Rejected(f"undecodable: {e}") from None
        if claims is not None and (m.job, m.round, m.final) != (claims.job, claims.round, claims.final):
            raise _Rejected(f"model of job {m.job!r} round {m.round} final {m.final} under a signature for "
                            f"job {claims.job!r} round {claims.round} final {claims.final}")
        if (why := rules.check_model(m, self.job)) is not None:
            raise _Rejected(why)
        if self._verifier is not None:
            if claims is None:
                self.stats.models_value_only += 1
            else:
                self.stats.models_bound += 1
        return m

    def _whole(self, manifest_value: bytes, at: int) -> bytes:
        man = pb.TransferManifest()
        try:
            man.ParseFromString(manifest_value)
        except DecodeError as e:
            raise _Rejected(f"manifest undecodable: {e}") from None
        if len(man.chunk_partitions) > 0:
            return self._fetch_listed(man, at)
        p, self._pending = self._pending, None
        n = man.chunk_count
        need = at - n if 0 < n <= transfer.MAX_CHUNKS else -1
        if p is None or p.transfer_id != man.transfer_id:
            raise _Rejected(f"incomplete: transfer {man.transfer_id}: manifest without its chunks", need)
        try:
            return transfer.assemble(man, p.chunks)
        except TransferError as e:
            raise _Rejected(str(e), need if len(p.chunks) < n else -1) from None

    def _fetch_listed(self, man: pb.TransferManifest, at: int) -> bytes:
        """Reads the chunks a listing manifest names, from every partition they
        are on (those partition 0's reading passed are held already), with a
        positional consumer of its own."""
        held, self._held = self._held, {}
        if not transfer.consistent(man, listed=True):
            raise _Rejected(f"transfer {man.transfer_id}: inconsistent listing manifest")
        chunks: dict[int, bytes] = {}
        want: dict[tuple[int, int], int] = {}
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for i in range(man.chunk_count):
            p, o = int(man.chunk_partitions[i]), int(man.chunk_offsets[i])
            if p < 0 or o < 0:
                raise _Rejected(f"transfer {man.transfer_id}: chunk {i} at partition {p} offset {o}")
            h = held.get(o)
            if p == 0 and h is not None and _header(h, transfer.HEADER_TRANSFER) == man.transfer_id.encode():
                chunks[i] = h.value() or b""
                continue
            want[(p, o)] = i
            first[p] = min(first.get(p, o), o)
            last[p] = max(last.get(p, o), o)
        if want:
            try:
                self._fetch_positions(man.transfer_id, want, first, last, chunks)
            except TransferError as e:
                raise _Rejected(f"incomplete: transfer {man.transfer_id}: {e}") from None
        try:
            return transfer.assemble(man, chunks)
        except TransferError as e:
            raise _Rejected(str(e)) from None

    def _fetch_positions(self, tid: str, want: dict[tuple[int, int], int], first: dict[int, int],
                         last: dict[int, int], chunks: dict[int, bytes]) -> None:
        if self._positional is None:
            conf = dict(self._consumer_conf)
            # Committed records: a fetch never waits for data.
            conf["fetch.wait.max.ms"] = 10
            conf["max.partition.fetch.bytes"] = min(int(conf["max.partition.fetch.bytes"]), 16 << 20)
            self._positional = ck.Consumer(conf)
        c = self._positional
        c.assign([ck.TopicPartition(self.topic, p, o) for p, o in first.items()])
        deadline = Deadline(_SPREAD_TIMEOUT)
        passed: set[int] = set()
        try:
            while want:
                if deadline.passed():
                    raise TransferError(f"{len(want)} chunks not read in {_SPREAD_TIMEOUT:g} s")
                msg = c.poll(_POLL)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == ck.KafkaError._PARTITION_EOF:
                        if msg.partition() not in passed:
                            raise TransferError(f"partition {msg.partition()} ended before its chunks")
                        continue
                    if err.fatal():
                        raise TransferError(err.str())
                    continue
                p, o = int(msg.partition() or 0), int(msg.offset() or 0)
                value = msg.value() or b""
                self.stats.received(len(value) + len(msg.key() or b""))
                i = want.pop((p, o), None)
                if i is not None and _header(msg, transfer.HEADER_TRANSFER) == tid.encode():
                    chunks[i] = value
                if o >= last[p]:
                    passed.add(p)
                    if want and len(passed) == len(first):
                        raise TransferError("the chunks are not where the manifest says")
        finally:
            c.unassign()

    # -- updates ------------------------------------------------------------

    def submit(self, update: pb.Update, timeout: float) -> None:
        """Produces the update keyed by client id and waits for the brokers'
        acknowledgement. An update larger than a chunk goes as chunks, then,
        once every chunk is acknowledged, their manifest: so the manifest
        follows its chunks even if a chunk was retried."""
        deadline = Deadline(timeout)
        value = update.SerializeToString()
        key = update.client_id.encode()
        topic = rules.updates_topic(self.job)
        batches: list[list[tuple[bytes, Headers]]] = []
        if len(value) > self._chunk:
            x = transfer.split(value, self._chunk)
            chunks = []
            for i in range(x.count):
                c = x.chunk(i)
                headers: Headers = [(transfer.HEADER_TRANSFER, x.transfer_id.encode()),
                           (transfer.HEADER_CHUNK, f"{i}/{x.count}/{len(value)}".encode())]
                if self._token:
                    headers.append((trust.HEADER_MAC, trust.chunk_mac(self._token, x.transfer_id, i, c)))
                chunks.append((c, headers))
            batches.append(chunks)
            value = x.manifest.SerializeToString()
            last_headers: Headers = [(transfer.HEADER_TRANSFER, x.transfer_id.encode()), (transfer.HEADER_MANIFEST, b"1")]
        else:
            last_headers = []
        if self._token:
            last_headers.append((trust.HEADER_MAC, trust.mac(self._token, value)))
        batches.append([(value, last_headers)])
        for batch in batches:
            self._produce_all(topic, key, batch, deadline, update.base_round)

    def _produce_all(self, topic: str, key: bytes, batch: list[tuple[bytes, Headers]],
                     deadline: Deadline, round_: int) -> None:
        assert self._producer is not None
        reports: list[Optional[ck.KafkaError]] = []

        def done(err: Optional[ck.KafkaError], _msg: Any) -> None:
            reports.append(err)

        on_delivery: Callable[[Optional[ck.KafkaError], Any], None] = done
        for value, headers in batch:
            while True:
                try:
                    self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                    break
                except BufferError:
                    self._producer.poll(_POLL)  # the local queue is full: let it drain
                except ck.KafkaException as e:
                    raise self._produce_error(e.args[0], round_) from None
        while len(reports) < len(batch):
            if deadline.passed():
                self._producer.purge(in_queue=True, in_flight=True)
                self._producer.poll(0)
                raise BrokerUnavailable(f"update round {round_}: not acknowledged by {self.brokers} in time"
                                        + self._last_error())
            self._producer.poll(min(_POLL, deadline.left()))
        for err in reports:
            if err is not None:
                raise self._produce_error(err, round_)
        for value, headers in batch:
            self.stats.sent(len(value) + len(key))

    def _produce_error(self, err: ck.KafkaError, round_: int) -> Exception:
        what = f"produce update round {round_}: {err.str()}"
        if err.code() in _AUTH_CODES:
            return Unauthenticated(what)
        if err.code() in _SIZE_CODES:
            return Oversize(what)
        return BrokerUnavailable(what + self._last_error())
