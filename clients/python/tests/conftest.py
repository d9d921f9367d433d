"""Fixtures of the Python client's tests: the Go aggregator and Go clients
built once from this repository, run as subprocesses with deadlines, on the
embedded broker (the aggregator's --embedded, franz-go kfake), on the real
Kafka broker of FDX_KAFKA_BROKERS (deploy/kafka/kafka.sh), or over gRPC.

Every test uses its own job id; gRPC aggregators and embedded brokers
listen on port 0 and the tests read the address from the aggregator's log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "clients" / "python" / "examples"
sys.path.insert(0, str(EXAMPLES))

CHANNELS = ["embedded", "kafka", "grpc"]


def tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"({path}: {e})"
    return "\n".join(lines[-n:])


@pytest.fixture(scope="session")
def go_bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The aggregator and the long-running Go client, built from the repo."""
    d = tmp_path_factory.mktemp("bin")
    out = {}
    for name, pkg in (("aggregator", "./aggregator"), ("client", "./function/cmd/client")):
        out[name] = d / name
        r = subprocess.run(["go", "build", "-o", str(out[name]), pkg], cwd=REPO, capture_output=True, text=True,
                           timeout=600)
        if r.returncode != 0:
            pytest.fail(f"go build {pkg}: {r.stderr[-4000:]}")
    return out


@pytest.fixture(scope="session")
def mnist_train():
    import mnist
    return mnist.load("train")


def job_id(name: str) -> str:
    return f"py-{re.sub(r'[^A-Za-z0-9.-]', '-', name)[:60]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def job(request: pytest.FixtureRequest) -> str:
    return job_id(request.node.name)


class Proc:
    """A subprocess whose output goes to a file, waited on with deadlines."""

    def __init__(self, name: str, args: list[str], log: Path, env: Optional[dict[str, str]] = None) -> None:
        self.name, self.args, self.log = name, args, log
        self._f = open(log, "wb")
        self.p = subprocess.Popen(args, stdout=self._f, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})}, cwd=REPO)

    def fail(self, why: str) -> None:
        pytest.fail(f"{self.name}: {why}\n$ {' '.join(self.args)}\n--- last lines of {self.log}:\n{tail(self.log)}")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first match of pattern in the output, waiting up to timeout."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.log.read_text(errors="replace"))
            if m:
                return m
            if self.p.poll() is not None:
                self.fail(f"exited with {self.p.returncode} before logging /{pattern}/")
            if time.monotonic() > deadline:
                self.fail(f"no /{pattern}/ in the log within {timeout:g} s")
            time.sleep(0.05)

    def wait(self, timeout: float, want: int = 0) -> None:
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            self.fail(f"still running after {timeout:g} s")
        if rc != want:
            self.fail(f"exit code {rc}, want {want}")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._f.close()


class Cluster:
    """Starts aggregators and Go clients for one test and stops them all."""

    def __init__(self, bins: dict[str, Path], tmp: Path, kind: str) -> None:
        self.bins, self.tmp, self.kind = bins, tmp, kind
        self.procs: list[Proc] = []
        self.key = Ed25519PrivateKey.generate()
        self.key_file = tmp / "model-key.pem"
        self.key_file.write_bytes(self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
        self.pub_file = tmp / "model-pub.pem"
        self.pub_file.write_bytes(self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
        self.channel = "grpc" if kind == "grpc" else "kafka"
        self._embedded: Optional[str] = None

    def embedded_broker(self) -> str:
        """The address of an embedded broker (kfake) that outlives the jobs
        run on it: it belongs to an aggregator of a job of its own that no
        client joins, so that a client reading a finished job's final model
        still finds the broker (a job's own --embedded broker ends with it)."""
        if self._embedded is None:
            p = Proc("embedded broker host", [str(self.bins["aggregator"]), "--embedded", "--broker", "127.0.0.1:0",
                                              "--job", job_id("host"), "--numrounds", "1", "--log-to", "text"],
                     self.tmp / "embedded-broker.log")
            self.procs.append(p)
            self._embedded = p.wait_for(r'embedded Kafka broker started.* addr=(\S+)', 60).group(1)
        return self._embedded

    def aggregator(self, job: str, *args: str, tokens: Optional[dict[str, str]] = None,
                   name: str = "aggregator", brokers: Optional[str] = None) -> tuple[Proc, str, Path]:
        """Starts the job's aggregator (on the real broker: FDX_KAFKA_BROKERS
        or brokers); its Proc, the address clients dial and the --out file."""
        if self.kind == "kafka" and brokers is None:
            brokers = kafka_brokers()
        out = self.tmp / f"{name}-{job}.json"
        argv = [str(self.bins["aggregator"]), "--job", job, "--log-to", "text", "--out", str(out)]
        if self.kind == "embedded":
            brokers = self.embedded_broker()
            argv += ["--broker", brokers, "--model-key", str(self.key_file)]
        elif self.kind == "kafka":
            argv += ["--broker", str(brokers), "--model-key", str(self.key_file)]
        else:
            argv += ["--grpc", "--broker", "127.0.0.1:0"]
        if tokens:
            f = self.tmp / f"tokens-{job}"
            f.write_text("".join(f"{c} {t}\n" for c, t in tokens.items()))
            argv += ["--tokens-file", str(f)]
        p = Proc(name, argv + list(args), self.tmp / f"{name}-{job}.log")
        self.procs.append(p)
        if self.kind == "grpc":
            addr = p.wait_for(r'gRPC aggregator listening.* addr=(\S+)', 60).group(1)
        else:
            addr = str(brokers)
        p.wait_for(r'msg="job started"', 60)
        return p, addr, out

    def go_client(self, addr: str, job: str, client_id: str, token: Optional[str] = None) -> Proc:
        argv = [str(self.bins["client"]), "--broker", addr, "--job", job, "--client-id", client_id,
                "--channel", self.channel, "--wait", "2m"]
        if self.channel == "kafka":
            argv += ["--model-pubkey", str(self.pub_file)]
        if token:
            argv += ["--token", token]
        p = Proc(f"go client {client_id}", argv, self.tmp / f"client-{client_id}-{job}.log")
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def kafka_brokers() -> str:
    b = os.environ.get("FDX_KAFKA_BROKERS", "")
    if not b:
        pytest.skip("FDX_KAFKA_BROKERS is not set: no real Kafka broker (scripts/test.sh starts one)")
    return b


@pytest.fixture(params=CHANNELS)
def cluster(request: pytest.FixtureRequest, go_bins: dict[str, Path], tmp_path: Path) -> Iterator[Cluster]:
    """Runs the test on the embedded broker, the real broker and gRPC."""
    if request.param == "kafka":
        kafka_brokers()
    c = Cluster(go_bins, tmp_path, request.param)
    yield c
    c.stop()


def read_out(p: Proc, out: Path, timeout: float = 180) -> dict:
    """Waits for the aggregator to finish its job and returns its --out file."""
    p.wait(timeout)
    return json.loads(out.read_text())


@pytest.fixture(params=["embedded", "kafka"])
def broker(request: pytest.FixtureRequest, go_bins: dict[str, Path], tmp_path: Path) -> Iterator[str]:
    """A Kafka broker: the embedded one of an aggregator that runs a job of
    its own, or the real one."""
    if request.param == "kafka":
        yield kafka_brokers()
        return
    c = Cluster(go_bins, tmp_path, "embedded")
    try:
        yield c.embedded_broker()
    finally:
        c.stop()
