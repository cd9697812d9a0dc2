"""A runner that returns no metrics to the driver still gets a funnel, and the report says why it is thin."""
from __future__ import annotations

import json

import pytest
from apache_beam.runners.runner import PipelineResult, PipelineState

from pipeline.cli import main as build_m3w
from pipeline.report import NO_METRICS, build_report, format_report, run_counters
from tests.conftest import REPO


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "out"
    assert build_m3w(["build", "--input", str(REPO / "samples" / "demo.warc.gz"), "--output", str(out),
                      "--direct_running_mode=in_memory"]) == 0
    return out


def test_no_metrics_from_the_runner_is_said_and_the_written_rows_come_from_the_manifest(corpus):
    real = json.loads((corpus / "report.json").read_text())["counters"]
    # Beam's base result is what a runner without metrics support hands back: metrics() raises.
    counters, note = run_counters(PipelineResult(PipelineState.DONE), str(corpus))
    assert note == {"metrics_missing": NO_METRICS}
    for name in ("output.documents", "output.images", "output.shards"):
        assert counters[name] == real[name] > 0
    lines = format_report(build_report(counters, **note)).splitlines()
    assert "the runner returned no metrics to the driver" in lines[1]
    written = [line for line in lines if line.strip().startswith("documents written")]
    assert written and written[0].split()[-1] == str(real["output.documents"])


def test_runs_with_metrics_carry_no_note(corpus):
    report = json.loads((corpus / "report.json").read_text())
    assert "metrics_missing" not in report
    assert report["counters"]["read.files"] == 1
