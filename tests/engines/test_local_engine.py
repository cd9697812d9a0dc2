"""The default local engine is named in the run's output and Beam's Prism runner is never tried."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SAMPLE = REPO / "samples" / "demo.warc.gz"

# Runs build-m3w in a fresh interpreter whose audit hook records every sign of Prism: its module
# being imported, a download from Beam's release pages, or a prism process being started. The
# download and the start are also refused, so no run here reaches the network (Beam then falls
# back to its FnApiRunner, as it does where the download is unreachable).
_WATCHED_BUILD = r"""
import json, sys
events = []
def hook(event, args):
    if event == "import" and args[0] == "apache_beam.runners.portability.prism_runner":
        events.append("import prism_runner")
    elif event == "urllib.Request" and "github.com/apache/beam" in str(args[0]):
        events.append("download " + str(args[0]))
        raise OSError("no network in tests")
    elif event == "subprocess.Popen" and "prism" in str(args[1]):
        events.append("start " + str(args[1]))
        raise OSError("no Prism in tests")
sys.addaudithook(hook)
from pipeline.cli import main
rc = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "prism": events}, f)
"""


def watched_build(tmp_path: Path, *extra: str) -> tuple[dict, str]:
    record = tmp_path / "record.json"
    proc = subprocess.run(
        [sys.executable, "-c", _WATCHED_BUILD, str(record), "build", "--input", str(SAMPLE),
         "--output", str(tmp_path / "out"), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(record.read_text()), proc.stderr


def test_default_engine_is_named_and_never_tries_prism(tmp_path):
    got, stderr = watched_build(tmp_path)
    assert got == {"rc": 0, "prism": []}
    engine_lines = [line for line in stderr.splitlines() if line.startswith("build-m3w: engine: ")]
    assert len(engine_lines) == 1, stderr
    assert engine_lines[0].startswith("build-m3w: engine: Beam FnApiRunner, ")
    assert "Prism not used" in engine_lines[0]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["counters"]["output.documents"] > 0


def test_users_direct_runner_tries_prism_as_beam_does(tmp_path):
    # The watch itself works: Beam's own DirectRunner, chosen by the user, goes to Prism first.
    got, stderr = watched_build(tmp_path, "--runner=DirectRunner")
    assert got["rc"] == 0
    assert "import prism_runner" in got["prism"]
    assert any(e.startswith(("download ", "start ")) for e in got["prism"]), got["prism"]
    assert "build-m3w: engine: Beam DirectRunner (Beam chooses Prism or its FnApiRunner)" in stderr
