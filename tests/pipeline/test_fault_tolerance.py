"""Same inputs, same corpus: across runners and worker counts, and after SIGKILL and a rerun."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from pipeline.cli import main as build_m3w
from pipeline.verify import verify
from tests.conftest import REPO, SHARED_DATA, shared_path

SAMPLE = str(REPO / "samples" / "demo.warc.gz")
# OBELICS's paragraph filters drop many text nodes, so rejects travel in batches of node and
# document drops (m3w's own paragraph checks drop few).
RECIPE = ["--preset", "obelics"]


def inputs() -> list[str]:
    """The bundled sample, plus two real crawls when ../shared/data is there."""
    paths = [SAMPLE]
    for rel in ("warc/node_warc_tests/books.toscrape.warc", "warc/ukwa_webarchive_discovery/wikipedia-mona-lisa"):
        if (SHARED_DATA / rel).exists():
            paths.append(str(SHARED_DATA / rel))
    return paths


def snapshot(out: str) -> dict[str, bytes]:
    """Every output file but the run's own timing, by relative path."""
    files = {}
    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, out)] = open(path, "rb").read()
    return files


def build(out: str, *runner: str) -> dict[str, bytes]:
    assert build_m3w(["build", "--input", *inputs(), "--output", out, "--shard-size", "3", *RECIPE, *runner]) == 0
    return snapshot(out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    return build(str(tmp_path_factory.mktemp("ref")), "--direct_running_mode=in_memory")


@pytest.mark.parametrize(
    "runner",
    [
        ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
    ],
    ids=["multi-process-2-workers", "portable-runner"],
)
def test_runners_and_worker_counts_write_byte_identical_corpora(reference, tmp_path, runner):
    got = build(str(tmp_path / "out"), *runner)
    assert sorted(got) == sorted(reference)
    assert any(name.startswith("wds/") for name in got) and any(name.startswith("parquet/") for name in got)
    for name in reference:
        assert got[name] == reference[name], f"{name} differs"


def test_every_counted_drop_has_its_reject_line(reference):
    """Rejects travel in batches (a text-filter batch's node and document drops in one element);
    each drop the counters count is one line of rejects/, under its stage and reason."""
    lines = [json.loads(line) for name, data in reference.items() if name.startswith("rejects/") for line in data.splitlines()]
    counters = json.loads(reference["report.json"])["counters"]
    text = Counter(r["reason"] for r in lines if r["stage"] == "text_filter")
    counted = Counter({k.split(".", 1)[1].split("dropped_", 1)[1]: v for k, v in counters.items() if k.startswith("text_filter.") and "dropped_" in k})
    assert text == counted and sum(text.values()) > 0
    # The bundled sample drops a handful; the real crawls give the batches many lines to carry.
    shared_path("warc", "node_warc_tests", "books.toscrape.warc")
    assert sum(text.values()) > 50


def test_sigkill_at_random_points_then_rerun_converges(reference, tmp_path):
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "pipeline.cli", "build", "--input", *inputs(), "--output", out, "--shard-size", "3", *RECIPE]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    rng = random.Random(20240501)
    for delay in sorted(rng.uniform(1.0, 12.0) for _ in range(3)):
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes
        proc.wait()
        # Whatever the kill left, no final name holds a partial file.
        for name in os.listdir(os.path.join(out, "wds")) if os.path.isdir(os.path.join(out, "wds")) else []:
            assert ".tmp-" in name or name.endswith(".tar")
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got = snapshot(out)
    assert sorted(got) == sorted(reference)
    for name in reference:
        assert got[name] == reference[name], f"{name} differs after kill and rerun"
    assert verify(out) == []

    # verify fails on one flipped byte.
    shard = os.path.join(out, sorted(n for n in got if n.startswith("parquet/"))[0])
    blob = bytearray(open(shard, "rb").read())
    blob[len(blob) // 2] ^= 0x10
    open(shard, "wb").write(bytes(blob))
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", out], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and "sha256" in result.stdout
