"""Python clients in jobs of the Go aggregator, beside Go clients, on the
embedded broker, the real Kafka broker and gRPC."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

import fdxkafka
from conftest import Cluster, job_id, read_out
from logreg_numpy import LogRegClient

JOB_ARGS = ["--minclients", "5", "--partitions", "5", "--numrounds", "3", "--max-examples", "600",
            "--eval-examples", "2000", "--seed", "7"]


def tokens(ids: list[str], job: str) -> dict[str, str]:
    return {c: f"tok-{job}-{c}" for c in ids}


def run_python(cluster: Cluster, addr: str, job: str, clients: dict[str, fdxkafka.Client],
               toks: dict[str, str], timeout: float = 180, **kw: Any) -> dict[str, fdxkafka.Summary]:
    """Runs the clients to the job's end, each in a thread."""
    key = None
    if cluster.channel == "kafka":
        # The aggregator binds job, topic, round and final into every
        # signature: a value-only signature must not be accepted here.
        key = fdxkafka.Verifier.load(cluster.pub_file)
    with ThreadPoolExecutor(len(clients)) as ex:
        futs = {c: ex.submit(fdxkafka.run_client, cl, broker=addr, job=job, client_id=c, channel=cluster.channel,
                             token=toks.get(c), model_public_key=key, timeout=timeout, **kw)
                for c, cl in clients.items()}
        return {c: f.result(timeout + 30) for c, f in futs.items()}


def finished(cluster: Cluster, s: fdxkafka.Summary) -> bool:
    """Whether s holds the final model. Over gRPC a client may ask for it
    after the aggregator stopped serving (the final model is not durable
    there): then it must say so; on Kafka (the embedded broker outlives the
    job here) it always has it."""
    if cluster.channel == "grpc" and not s.final:
        assert s.final_missed, s
        return False
    assert s.final and not s.final_missed, s
    return True


def test_mixed_job(cluster: Cluster, mnist_train) -> None:
    """3 Go and 2 Python logistic-regression clients finish a job; the
    Python updates are counted in every round and the final accuracy is
    within 0.01 of the same job with 5 Go clients."""
    x, y = mnist_train
    ids = ["0", "1", "2", "3", "4"]

    job = job_id("mixed-" + cluster.kind)
    toks = tokens(ids, job)
    agg, addr, out = cluster.aggregator(job, *JOB_ARGS, tokens=toks)
    go = [cluster.go_client(addr, job, c, toks[c]) for c in ids[:3]]
    py = run_python(cluster, addr, job, {c: LogRegClient(x, y) for c in ids[3:]}, toks)
    mixed = read_out(agg, out)
    for g in go:
        g.wait(60)

    assert len(mixed["rounds"]) == 3
    for r in mixed["rounds"]:
        assert sorted(r["contributors"]) == ids, f"round {r['round']}"
    assert not mixed.get("rejected"), mixed.get("rejected")
    for c, s in py.items():
        assert [(r.round, r.status) for r in s.rounds] == [(1, "trained"), (2, "trained"), (3, "trained")], c
        assert s.records_rejected == 0, s.rejected
        if cluster.channel == "kafka":
            assert s.models_bound >= 1 and s.models_value_only == 0, (s.models_bound, s.models_value_only)
            print(f"client {c}: {s.models_bound} models signed with the binding, {s.models_value_only} value-only")
        if not finished(cluster, s):
            continue
        assert s.last_round == 4
        assert s.final_metrics["accuracy"] == mixed["final_model"]["metrics"]["accuracy"]
        want = [np.asarray(t["values"], np.float32).reshape(t["shape"]) for t in mixed["final_model"]["tensors"]]
        assert all(np.array_equal(a, b) for a, b in zip(s.final_parameters, want))

    job = job_id("allgo-" + cluster.kind)
    toks = tokens(ids, job)
    agg, addr, out = cluster.aggregator(job, *JOB_ARGS, tokens=toks, name="aggregator-go")
    go = [cluster.go_client(addr, job, c, toks[c]) for c in ids]
    allgo = read_out(agg, out)
    for g in go:
        g.wait(60)
    a_mixed = mixed["rounds"][-1]["accuracy"]
    a_go = allgo["rounds"][-1]["accuracy"]
    print(f"{cluster.kind}: final accuracy 3 Go + 2 Python {a_mixed:.4f}, 5 Go {a_go:.4f}")
    assert abs(a_mixed - a_go) <= 0.01
    assert a_mixed > 0.5


@pytest.mark.parametrize("encoding", ["int8", "topk:0.2"])
def test_sampling_evaluation_encodings(cluster: Cluster, mnist_train, encoding: str) -> None:
    """Python clients follow the aggregator's sample: exactly the sampled
    clients train, the clients asked to evaluate report held-out metrics,
    and compressed update encodings (deltas) are accepted."""
    x, y = mnist_train
    ids = [str(i) for i in range(6)]
    job = job_id(f"sampling-{encoding}-{cluster.kind}")
    toks = tokens(ids, job)
    agg, addr, out = cluster.aggregator(
        job, "--numrounds", "3", "--minclients", "2", "--partitions", "6", "--max-examples", "300",
        "--eval-examples", "1000", "--fraction-fit", "0.5", "--fraction-evaluate", "0.5", "--update-encoding",
        encoding, "--round-timeout", "2m", tokens=toks)
    py = run_python(cluster, addr, job, {c: LogRegClient(x, y) for c in ids}, toks)
    res = read_out(agg, out)
    assert not res.get("rejected"), res.get("rejected")
    assert len(res["rounds"]) == 3
    for r in res["rounds"]:
        n = r["round"]
        trained = sorted(c for c, s in py.items() for rr in s.rounds if rr.round == n and rr.status == "trained")
        evaluated = [c for c, s in py.items() for rr in s.rounds if rr.round == n and rr.eval_loss is not None]
        assert sorted(r["contributors"]) == trained == sorted(r["sampled"]), n
        assert 0 < len(trained) < len(ids)
        assert evaluated and r["federated"], n
    for c, s in py.items():
        finished(cluster, s)
        assert s.records_rejected == 0, c
        assert {rr.round for rr in s.rounds} == {1, 2, 3}, (c, s.rounds)
    print(f"{cluster.kind} {encoding}: accuracy {res['rounds'][-1]['accuracy']:.4f}")
    assert res["rounds"][-1]["accuracy"] > 0.5


@pytest.mark.parametrize("kind", ["embedded", "kafka"])
def test_async_job(kind: str, go_bins, tmp_path, mnist_train) -> None:
    """In an asynchronous (FedBuff) job Python clients send deltas from the
    version they trained on, and every version folds theirs. (Kafka only: a
    client still training when a gRPC aggregator publishes the final
    version and exits cannot tell that from an aggregator restart.)"""
    cluster = Cluster(go_bins, tmp_path, kind)
    try:
        run_async_job(cluster, mnist_train)
    finally:
        cluster.stop()


def run_async_job(cluster: Cluster, mnist_train) -> None:
    x, y = mnist_train
    ids = ["0", "1", "2"]
    job = job_id("async-" + cluster.kind)
    toks = tokens(ids, job)
    args = ["--mode", "async", "--buffer-size", "2", "--minclients", "2", "--partitions", "3", "--numrounds", "4",
            "--max-examples", "300", "--eval-examples", "1000"]
    if cluster.channel == "kafka":
        args += ["--update-partitions", "1"]
    agg, addr, out = cluster.aggregator(job, *args, tokens=toks)
    py = run_python(cluster, addr, job, {c: LogRegClient(x, y) for c in ids}, toks)
    res = read_out(agg, out)
    assert len(res["rounds"]) == 4
    for r in res["rounds"]:
        assert len(r["contributors"]) == 2 and set(r["contributors"]) <= set(ids), r
    assert set(res.get("rejected") or {}) <= {"stale_round", "duplicate"}, res.get("rejected")
    for c, s in py.items():
        finished(cluster, s)
        assert any(r.status == "trained" for r in s.rounds), c
    print(f"{cluster.kind} async: accuracy {res['rounds'][-1]['accuracy']:.4f}, rejected {res.get('rejected')}")
    assert res["rounds"][-1]["accuracy"] > 0.5
