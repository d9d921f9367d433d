"""What a Python client refuses and what it is refused: forged and
replayed models, another client's token; and a chunked update larger than
the broker's message limit that the aggregator folds."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import confluent_kafka as ck
import numpy as np
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import fdxkafka
from conftest import REPO, Cluster, kafka_brokers, read_out
from fdxkafka import tensors, trust
from fdxkafka._pb.fdx.v1 import fdx_pb2 as pb
from fdxkafka.kafka_channel import KafkaChannel
from logreg_numpy import LogRegClient


def model(job: str, round_: int, final: bool = False) -> bytes:
    m = pb.GlobalModel(job=job, round=round_, num_rounds=5, final=final)
    m.params.extend(tensors.encode_as([np.full(4, round_, np.float32)], [tensors.Spec("w", (4,))], pb.DTYPE_FLOAT32))
    return m.SerializeToString()


def signed(key: Ed25519PrivateKey, job: str, topic: str, round_: int, value: bytes,
           final: bool = False) -> list[tuple[str, bytes]]:
    claims = trust.ModelClaims(job, topic, round_, final)
    return [(trust.HEADER_SIGNATURE, key.sign(claims.signing_input(value))),
            (trust.HEADER_KEY_ID, trust.key_id(key.public_key()).encode()),
            (trust.HEADER_ROUND, str(round_).encode()), (trust.HEADER_FINAL, b"1" if final else b"0")]


def test_forged_and_replayed_models(broker: str, job: str) -> None:
    """Only models signed by the job's key for this job, topic and round are
    used; an older round is never taken after a newer one."""
    topic = fdxkafka.rules.model_topic(job)
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(topic, 1, 1)], operation_timeout=30)[topic].result(30)
    key, attacker = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    prod = ck.Producer({"bootstrap.servers": broker, "acks": "all"})

    def produce(value: bytes, headers: list[tuple[str, bytes]]) -> None:
        prod.produce(topic, value=value, headers=headers)
        assert prod.flush(30) == 0

    genuine1 = (model(job, 1), signed(key, job, topic, 1, model(job, 1)))
    produce(*genuine1)
    ch = KafkaChannel(broker, job, verifier=trust.Verifier([key.public_key()]))
    try:
        assert ch.model(1, 30).round == 1

        forged = [
            # Signed by another key under the job key's id.
            (model(job, 2), signed(attacker, job, topic, 2, model(job, 2))[:1] + signed(key, job, topic, 2, b"")[1:]),
            # Unsigned.
            (model(job, 2), signed(key, job, topic, 2, model(job, 2))[2:]),
            # Genuine, of another job's topic.
            (model(job, 2), signed(key, "other", "fdx.other.model", 2, model(job, 2))),
            # A genuine signature of round 5 over a value that says round 2.
            (model(job, 2), signed(key, job, topic, 5, model(job, 2))),
            # A signature over the value alone (not bound to round or topic).
            (model(job, 2), [(trust.HEADER_SIGNATURE, key.sign(model(job, 2))),
                             (trust.HEADER_KEY_ID, trust.key_id(key.public_key()).encode())]),
            # Genuine, but a round 1 model replayed as the final one.
            (model(job, 1), signed(key, job, topic, 1, model(job, 1), final=True)),
        ]
        for value, headers in forged:
            produce(value, headers)
        with pytest.raises(fdxkafka.ModelTimeout):
            ch.model(2, 3)
        why = [re.sub(r"^offset \d+: ", "", r) for r in ch.rejections]
        assert len(why) == len(forged), why
        assert [w.split(" ")[0] for w in why] == ["signature:"] * 3 + ["model", "signature:", "model"], why
        assert "unsigned" in why[1] and "value-only" in why[4]

        produce(model(job, 3), signed(key, job, topic, 3, model(job, 3)))
        assert ch.model(2, 30).round == 3
        produce(*genuine1)  # replayed
        with pytest.raises(fdxkafka.ModelTimeout):
            ch.model(4, 3)
        assert "older than round 3" in ch.rejections[-1]
        assert ch.stats.records_rejected == len(forged) + 1
    finally:
        ch.close()
        prod.flush(5)


def test_another_clients_token(cluster: Cluster, job: str, mnist_train) -> None:
    """An update sent with another client's token is refused: over gRPC as
    an exception (Unauthenticated), over Kafka in the aggregator's counts;
    the client's own token is accepted."""
    x, y = mnist_train
    toks = {"0": "tok-0", "3": "tok-3", "4": "tok-4"}
    agg, addr, out = cluster.aggregator(job, "--minclients", "1", "--numrounds", "1", "--partitions", "5",
                                        "--max-examples", "200", "--eval-examples", "500", tokens=toks)
    key = fdxkafka.Verifier.load(cluster.pub_file, allow_value_only=True) if cluster.channel == "kafka" else None
    kw = dict(broker=addr, job=job, client_id="3", channel=cluster.channel, model_public_key=key, timeout=60)
    if cluster.channel == "grpc":
        with pytest.raises(fdxkafka.Unauthenticated):
            fdxkafka.run_once(LogRegClient(x, y), token=toks["4"], **kw)
    else:
        s = fdxkafka.run_once(LogRegClient(x, y), token=toks["4"], **kw)
        assert [r.status for r in s.rounds] == ["trained"]  # produced; refused by the aggregator
    s = fdxkafka.run_once(LogRegClient(x, y), token=toks["3"], **kw)
    assert [(r.round, r.status) for r in s.rounds] == [(1, "trained")]
    res = read_out(agg, out, 60)
    assert [r["contributors"] for r in res["rounds"]] == [["3"]]
    if cluster.channel == "kafka":
        assert res["rejected"] == {"unauthenticated": 1}


def broker_limit(brokers: str) -> int:
    """The broker-wide message.max.bytes."""
    a = AdminClient({"bootstrap.servers": brokers})
    b = next(iter(a.list_topics(timeout=30).brokers))
    cfg = a.describe_configs([ck.admin.ConfigResource("BROKER", str(b))])
    return int(next(iter(cfg.values())).result(30)["message.max.bytes"].value)


class Nudge(fdxkafka.Client):
    """Trains the synthetic model: a small seeded step."""

    def fit(self, parameters, config):
        rng = np.random.default_rng(int(config["seed"]))
        return [p + rng.normal(0, 1e-3, p.shape).astype(np.float32) for p in parameters], 10, {}


@pytest.mark.parametrize("kind", ["embedded", "kafka"])
def test_chunked_update_over_broker_limit(kind: str, go_bins: dict[str, Path], tmp_path: Path, job: str) -> None:
    """A model larger than the broker's message limit arrives in chunks, and
    the update goes back in chunks with a MAC on each; the aggregator folds
    it into the next model."""
    if kind == "kafka":
        kafka_brokers()
    # kfake's and deploy/kafka/kafka.sh's message.max.bytes (the topics the
    # aggregator creates get a larger max.message.bytes: one the broker-wide
    # limit does not bound, so it is the limit clients must chunk below).
    limit = 16 << 20 if kind == "kafka" else 1048588
    mb = limit // (1 << 20) + 1
    c = Cluster(go_bins, tmp_path, kind)
    try:
        agg, addr, out = c.aggregator(job, "--model", f"synthetic:{mb}", "--dataset", "synthetic", "--minclients",
                                      "1", "--numrounds", "1", tokens={"py": "tok-py"})
        assert limit == broker_limit(addr)
        s = fdxkafka.run_client(Nudge(), broker=addr, job=job, client_id="py", token="tok-py", timeout=120,
                                model_public_key=fdxkafka.Verifier.load(c.pub_file, allow_value_only=True))
        res = read_out(agg, out, 120)
    finally:
        c.stop()
    assert [r["contributors"] for r in res["rounds"]] == [["py"]]
    assert s.final and [r.status for r in s.rounds] == ["trained"]
    assert s.bytes_sent > limit and s.messages_sent > 2  # chunks and their manifest
    assert sum(p.nbytes for p in s.final_parameters) > limit


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fdx test aggregator")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp / "server.pem", tmp / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_grpc_tls_and_bearer_token(go_bins: dict[str, Path], tmp_path: Path, job: str, mnist_train) -> None:
    """Over TLS with a bearer token a round completes; without TLS, with a CA
    that did not sign the server's certificate, or without the token the
    client gets typed errors."""
    x, y = mnist_train
    cert, key = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    other, _ = self_signed(tmp_path / "other")
    c = Cluster(go_bins, tmp_path, "grpc")
    try:
        agg, addr, out = c.aggregator(job, "--minclients", "1", "--numrounds", "1", "--max-examples", "200",
                                      "--eval-examples", "500", "--tls-cert", str(cert), "--tls-key", str(key),
                                      tokens={"3": "tok-3"})
        kw = dict(broker=addr, job=job, client_id="3", channel="grpc", connect_timeout=3, timeout=30)
        with pytest.raises(fdxkafka.BrokerUnavailable):
            fdxkafka.run_once(LogRegClient(x, y), token="tok-3", **kw)  # plaintext to a TLS server
        with pytest.raises(fdxkafka.BrokerUnavailable):
            fdxkafka.run_once(LogRegClient(x, y), token="tok-3", tls=fdxkafka.TLS(ca_file=str(other)), **kw)
        with pytest.raises(fdxkafka.Unauthenticated):
            fdxkafka.run_once(LogRegClient(x, y), tls=fdxkafka.TLS(ca_file=str(cert)), **kw)
        s = fdxkafka.run_once(LogRegClient(x, y), token="tok-3", tls=fdxkafka.TLS(ca_file=str(cert)), **kw)
        assert [(r.round, r.status) for r in s.rounds] == [(1, "trained")]
        res = read_out(agg, out, 60)
    finally:
        c.stop()
    assert [r["contributors"] for r in res["rounds"]] == [["3"]]


def secure_props(role: str) -> dict[str, str]:
    """librdkafka settings of role on the secure broker (kafka.sh secure
    mode: SASL/SCRAM, ACLs)."""
    d = os.environ.get("FDX_KAFKA_SECURE_DIR", "")
    props = {}
    for line in (Path(d) / "secrets" / f"{role}.properties").read_text().splitlines():
        k, sep, v = line.strip().partition("=")
        if sep and not line.lstrip().startswith("#"):
            props[k.strip()] = v.strip()
    return props


def test_secure_broker(go_bins: dict[str, Path], tmp_path: Path, job: str, mnist_train) -> None:
    """On a broker with SASL and ACLs (kafka.sh acls: the client principal may
    read the model topic and write the updates topic of the job, and use no
    group) a Python client finishes a job; a wrong password is
    Unauthenticated, another job's topics are refused."""
    brokers, d = os.environ.get("FDX_KAFKA_SECURE_BROKERS", ""), os.environ.get("FDX_KAFKA_SECURE_DIR", "")
    if not brokers or not d:
        pytest.skip("no secure broker: set FDX_KAFKA_SECURE_BROKERS and FDX_KAFKA_SECURE_DIR (scripts/test.sh does)")
    x, y = mnist_train
    port = brokers.split(",")[0].rsplit(":", 1)[1]
    r = subprocess.run(["bash", str(REPO / "deploy" / "kafka" / "kafka.sh"), "acls", job], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "FDX_KAFKA_DIR": d, "FDX_KAFKA_PORT": port})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    c = Cluster(go_bins, tmp_path, "kafka")
    conf = tmp_path / "aggregator.properties"
    conf.write_text("".join(f"{k}={v}\n" for k, v in secure_props("aggregator").items()))
    try:
        agg, _, out = c.aggregator(job, "--minclients", "1", "--numrounds", "2", "--max-examples", "200",
                                   "--eval-examples", "500", "--kafka-config", str(conf), brokers=brokers)
        props = secure_props("client")
        key = fdxkafka.Verifier.load(c.pub_file, allow_value_only=True)
        with pytest.raises(fdxkafka.Unauthenticated):
            fdxkafka.run_once(LogRegClient(x, y), broker=brokers, job=job, client_id="0", connect_timeout=10,
                              kafka_properties={**props, "sasl.password": "wrong"}, model_public_key=key)
        with pytest.raises(fdxkafka.Unauthenticated):
            fdxkafka.run_once(LogRegClient(x, y), broker=brokers, job=job + "-other", client_id="0", timeout=10,
                              kafka_properties=props, model_public_key=key)
        s = fdxkafka.run_client(LogRegClient(x, y), broker=brokers, job=job, client_id="0", timeout=120,
                                kafka_properties=props, model_public_key=key)
        res = read_out(agg, out, 120)
    finally:
        c.stop()
    assert s.final and [r.status for r in s.rounds] == ["trained", "trained"]
    assert [r["contributors"] for r in res["rounds"]] == [["0"], ["0"]]
