"""Commands that run no pipeline never import Apache Beam (it costs ~1 s before the first page).

Each command runs for real in a fresh interpreter, which then reports whether ``apache_beam`` was
imported. Only ``build`` may import it.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import REPO

DEMO = str(REPO / "samples" / "demo.warc.gz")
PAGE = "<html><head><title>T</title></head><body><p>A paragraph of article text, long enough to count.</p></body></html>"
_PROBE = (
    "import sys, json\n"
    "from pipeline.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print(json.dumps({'rc': rc, 'beam': 'apache_beam' in sys.modules}), file=sys.stderr)\n"
)


def run_cli(*args: str) -> dict:
    res = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, cwd=REPO, timeout=300)
    return json.loads(res.stderr.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("fast-start") / "out"
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "build", "--input", DEMO, "--output", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert res.returncode == 0, res.stderr
    return str(out)


def test_help_imports_no_beam():
    assert run_cli("--help") == {"rc": 0, "beam": False}


def test_extract_of_a_warc_and_an_html_file_imports_no_beam(tmp_path):
    (tmp_path / "page.html").write_text(PAGE)
    assert run_cli("extract", DEMO, str(tmp_path / "page.html")) == {"rc": 0, "beam": False}


def test_explain_imports_no_beam():
    assert run_cli("explain", "--input", DEMO) == {"rc": 0, "beam": False}


def test_verify_imports_no_beam(corpus):
    assert run_cli("verify", corpus) == {"rc": 0, "beam": False}


def test_eval_index_imports_no_beam(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, colour in enumerate(("red", "navy", "olive")):
        Image.new("RGB", (64, 48), colour).save(images / f"{i}.png")
    got = run_cli("eval-index", "--images", str(images), "--name", "tiny", "--output", str(tmp_path / "eval.idx"))
    assert got == {"rc": 0, "beam": False}
    assert (tmp_path / "eval.idx").stat().st_size > 0
