"""OpenFlamingo's own MMC4 loader (the ``open-flamingo`` package, in a venv of its own) trains on
``build-m3w --format mmc4`` shards: batches of the right shapes, and every document's images and
text as m3w wrote them, each ``<image>`` before the text it sits before in the page."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys

import pytest

from schemas.document import ImageNode, TextNode
from tests.conftest import REPO

HERE = REPO / "tests" / "clients"


@pytest.fixture(scope="session")
def openflamingo_python() -> str:
    """The cached OpenFlamingo venv's python (built on first use: a few minutes, mostly torch)."""
    env = dict(os.environ, PYTHON=os.path.realpath(sys.base_prefix + "/bin/python3"))
    r = subprocess.run(["bash", str(HERE / "openflamingo-venv.sh")], capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    return os.path.join(r.stdout.strip().splitlines()[-1], "bin", "python")


@pytest.fixture(scope="session")
def reports(corpus, openflamingo_python, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("openflamingo")
    probe = [openflamingo_python, str(HERE / "openflamingo_probe.py")]
    usable = str(folder / "usable.tar")
    r = subprocess.run([*probe, "documents", str(folder / "documents.json"), usable, *corpus.shards("mmc4")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads((folder / "documents.json").read_text())
    out["loader"] = None
    if out["usable"]:
        r = subprocess.run([*probe, "loader", str(folder / "loader.json"), usable], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
        out["loader"] = json.loads((folder / "loader.json").read_text())
    return out


def _bare(text: str) -> str:
    """Text without OpenFlamingo's markers and whitespace (it trims the spaces around markers)."""
    return re.sub(r"\s+", "", text.replace("<image>", "").replace("<|endofchunk|>", "").replace("<|endoftext|>", ""))


def test_openflamingo_reads_every_document_image_and_text(corpus, reports):
    docs = reports["documents"]
    assert set(docs) == set(corpus.docs)
    min_bytes = (reports["min_kb"] + 1) * 1000  # it keeps an image when len(bytes) // 1000 > MIN_KB
    for doc_id, doc in corpus.docs.items():
        got = docs[doc_id]
        images = [n for n in doc.nodes if isinstance(n, ImageNode) and n.data is not None]
        texts = [n.text for n in doc.nodes if isinstance(n, TextNode)]
        keep = [i for i, n in enumerate(images) if len(n.data) >= min_bytes]
        if not keep:
            assert got == {"error": "No images in sample"}
            continue
        assert got["kept"] == keep and all(got["same_pixels"]), doc_id
        assert _bare(got["text"]) == _bare("".join(texts))
        # Each <image> comes just before the text the image sits before in the page.
        segments = got["text"].split("<image>")
        assert len(segments) - 1 == len(keep)
        matched = [sum(1 for n in doc.nodes[: doc.nodes.index(img)] if isinstance(n, TextNode)) for img in images]
        for k, i in enumerate(keep):
            following = _bare("".join(segments[1 + k:]))
            assert following.startswith(_bare(texts[min(matched[i], len(texts) - 1)])[:40]), (doc_id, k)


def test_openflamingo_loader_yields_batches_of_the_right_shapes(corpus, reports):
    if not reports["usable"]:
        pytest.skip("no document of this corpus has an image OpenFlamingo keeps in its first 256 tokens")
    batches = reports["loader"]["batches"]
    assert len(batches) == reports["loader"]["num_batches"] >= 1
    for b in batches:
        assert b["images"] == [2, 6, 3, 224, 224] and b["images_dtype"] == "torch.float32"
        assert b["input_ids"] == b["attention_mask"] == [2, 1, 256]
        assert 2 <= b["image_tokens"] <= 12


def test_mmc4_images_are_base64_of_the_stored_bytes(corpus):
    """The same check from m3w's side: what OpenFlamingo decodes is byte for byte the stored image."""
    import tarfile

    for path in corpus.shards("mmc4"):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                obj = json.loads(tar.extractfile(m).read())
                stored = [n.data for n in corpus.docs[obj["doc_id"]].nodes if isinstance(n, ImageNode)]
                assert [base64.b64decode(i["image_base64"]) for i in obj["image_info"]] == stored
