"""The same corpus from real engines: EXTERNAL Python worker pools, a Flink cluster, a Spark cluster.

Each engine's run on the shared crawls (damaged ones included) must write shards, manifest.json and
rejects/ byte-identical to the local engine's, and a report.json with the same counters. Clusters
run on 127.0.0.1 (tests/engines/clusters.py); one cluster per engine per session.

The Flink and Spark tests skip, saying why, where Java or Maven is missing or where Beam's job
server jar cannot be had (Maven Central refuses it, or it is not set in $M3W_*_JOB_SERVER_JAR).
With M3W_ENGINES_REQUIRED=1 such a skip is a failure instead.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from pipeline.cli import main as build_m3w
from tests.conftest import REPO, SHARED_DATA
from tests.engines import clusters

# Real crawls, small: pages with images, and the damaged files (truncated records and gzip
# members, wrong chunking, a broken WARC, a bad ARC).
SHARED_INPUTS = (
    "warc/node_warc_tests/books.toscrape.warc",
    "warc/ukwa_webarchive_discovery/wikipedia-mona-lisa",
    "warc/ukwa_webarchive_discovery/IAH-20080430204825-00000-blackbook-truncated.warc.gz",
    "warc/ukwa_webarchive_discovery/IAH-20080430204825-00000-blackbook-truncated.arc.gz",
    "warc/warcio_test_data",
    "warc/ipwb_samples/broken.warc",
)


@pytest.fixture(scope="session")
def engine_inputs(tmp_path_factory) -> list[str]:
    """Absolute paths (a cluster's workers do not share this directory): the sample, two hostile
    files made from it, and the shared crawls where ../shared/data is there."""
    d = tmp_path_factory.mktemp("hostile")
    sample = (REPO / "samples" / "demo.warc.gz").read_bytes()
    (d / "cut-mid-member.warc.gz").write_bytes(sample[: len(sample) * 2 // 3])
    (d / "garbage-after-records.warc.gz").write_bytes(sample + gzip.compress(b"WARC/1.0\r\nnot a header\r\n" * 50))
    paths = [str(REPO / "samples" / "demo.warc.gz"), str(d / "cut-mid-member.warc.gz"), str(d / "garbage-after-records.warc.gz")]
    paths += [str(SHARED_DATA / rel) for rel in SHARED_INPUTS if (SHARED_DATA / rel).exists()]
    return paths


def build(inputs: list[str], out: Path, *runner: str) -> dict[str, bytes]:
    assert build_m3w(["build", "--input", *inputs, "--output", str(out), "--shard-size", "3", *runner]) == 0
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def reference(engine_inputs, tmp_path_factory) -> dict[str, bytes]:
    return build(engine_inputs, tmp_path_factory.mktemp("local") / "out")


def assert_same_corpus(got: dict[str, bytes], reference: dict[str, bytes]) -> None:
    assert sorted(got) == sorted(reference)
    assert any(name.startswith("wds/") for name in got) and any(name.startswith("rejects/") for name in got)
    for name in reference:
        if name == "report.json":
            continue
        assert got[name] == reference[name], f"{name} differs from the local engine's"
    report, ref_report = json.loads(got["report.json"]), json.loads(reference["report.json"])
    assert "metrics_missing" not in report, report["metrics_missing"]
    assert report["counters"] == ref_report["counters"]


def need(make):
    """The engine's prerequisite, or a skip that says why (a failure with M3W_ENGINES_REQUIRED=1)."""
    why = clusters.missing_tools()
    if why is None:
        try:
            return make()
        except clusters.EngineUnavailable as e:
            why = str(e)
    if os.environ.get("M3W_ENGINES_REQUIRED") == "1":
        pytest.fail(f"engine test could not run: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def worker_pools(tmp_path_factory):
    pools = clusters.WorkerPools(tmp_path_factory.mktemp("pools"), n=2)
    yield pools
    pools.stop()


def test_external_worker_pool_writes_the_local_corpus(engine_inputs, reference, worker_pools, tmp_path):
    # The Python work runs in processes the pool starts, in another working directory: the
    # portability path every cluster takes, without a cluster.
    before = worker_pools.workers_started()[0]
    got = build(engine_inputs, tmp_path / "out", "--runner=PortableRunner", "--job_endpoint=embed",
                "--environment_type=EXTERNAL", f"--environment_config=127.0.0.1:{worker_pools.ports[0]}")
    assert worker_pools.workers_started()[0] > before
    assert_same_corpus(got, reference)


def test_relative_paths_are_refused_where_workers_run_elsewhere(worker_pools, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    rc = build_m3w(["build", "--input", "samples/demo.warc.gz", "--output", str(tmp_path / "out"),
                    "--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
                    f"--environment_config=127.0.0.1:{worker_pools.ports[0]}"])
    assert rc == 2
    assert "'samples/demo.warc.gz' is a relative path" in capsys.readouterr().err


@pytest.fixture(scope="session")
def flink(tmp_path_factory):
    jar = need(lambda: clusters.job_server_jar(clusters.FLINK_JOB_SERVER, "M3W_FLINK_JOB_SERVER_JAR"))
    cluster = clusters.FlinkCluster(tmp_path_factory.mktemp("flink"), taskmanagers=2)
    yield cluster, jar
    cluster.stop()


@pytest.mark.parametrize("environment", ["LOOPBACK", "EXTERNAL"])
def test_flink_cluster_writes_the_local_corpus(engine_inputs, reference, flink, worker_pools, environment, tmp_path):
    cluster, jar = flink
    env = ["--environment_type=LOOPBACK"]
    if environment == "EXTERNAL":
        env = ["--environment_type=EXTERNAL", f"--environment_config=127.0.0.1:{worker_pools.ports[1]}"]
    before = worker_pools.workers_started()[1]
    got = build(engine_inputs, tmp_path / "out", "--runner=FlinkRunner", f"--flink_master={cluster.master}",
                f"--flink_job_server_jar={jar}", "--parallelism=2", *env)
    if environment == "EXTERNAL":
        assert worker_pools.workers_started()[1] - before >= 2  # one Python worker per task slot
    assert cluster.overview()["jobs-finished"] >= 1
    assert_same_corpus(got, reference)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    jar = need(lambda: clusters.job_server_jar(clusters.SPARK_JOB_SERVER, "M3W_SPARK_JOB_SERVER_JAR"))
    cluster = clusters.SparkCluster(tmp_path_factory.mktemp("spark"), cores=2)
    yield cluster, jar
    cluster.stop()


def test_spark_cluster_writes_the_local_corpus(engine_inputs, reference, spark, tmp_path):
    cluster, jar = spark
    got = build(engine_inputs, tmp_path / "out", "--runner=SparkRunner", f"--spark_master_url={cluster.master_url}",
                f"--spark_job_server_jar={jar}", "--environment_type=LOOPBACK")
    assert_same_corpus(got, reference)
