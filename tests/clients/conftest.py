"""Corpora the client tests read: built by ``build-m3w`` in all three formats.

``sample``: the bundled demo crawl (always there). ``real``: real crawls from ../shared/data with
the default config (skips with a reason when the data is absent). Each corpus comes with the
documents the pipeline wrote, read back from the wds JSON, as the reference every client's view
is compared with; every stored image also carries the sha256 the pipeline hashed when it
processed it, so an image that reaches a client changed would not match.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest

from pipeline.cli import main as build_m3w
from schemas.document import Document, ImageNode, from_json
from tests.conftest import REPO, shared_path

REAL_CRAWLS = (
    ("warc", "node_warc_tests", "books.toscrape.warc"),
    ("warc", "ukwa_webarchive_discovery", "wikipedia-mona-lisa"),
    ("warc", "aut_test_resources", "example.warc.gz"),
)


@dataclass
class Corpus:
    root: Path
    docs: dict[str, Document]  # doc_id -> the document as written, image bytes attached

    def shards(self, fmt: str) -> list[str]:
        folder = self.root / fmt
        return sorted(str(folder / n) for n in os.listdir(folder))

    @property
    def images(self) -> int:
        return sum(1 for d in self.docs.values() for n in d.nodes if isinstance(n, ImageNode) and n.data is not None)


def _reference(root: Path) -> dict[str, Document]:
    docs = {}
    for name in sorted(os.listdir(root / "wds")):
        with tarfile.open(root / "wds" / name) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for member, blob in members.items():
            if member.endswith(".json"):
                doc = from_json(json.loads(blob))
                packed = msgpack.unpackb(members[member[: -len("json")] + "images.mp"])
                for node, data in zip(doc.nodes, packed):
                    if isinstance(node, ImageNode):
                        node.data = data
                        assert data is None or hashlib.sha256(data).hexdigest() == node.sha256
                docs[doc.doc_id] = doc
    return docs


def _build(out: Path, inputs: list[str]) -> Corpus:
    rc = build_m3w(["build", "--input", *inputs, "--output", str(out), "--format", "wds,mmc4,parquet",
                    "--shard-size", "8"])
    assert rc == 0
    corpus = Corpus(out, _reference(out))
    assert corpus.docs and corpus.images
    return corpus


@pytest.fixture(scope="session", params=["sample", "real"])
def corpus(request, tmp_path_factory) -> Corpus:
    if request.param == "sample":
        inputs = [str(REPO / "samples" / "demo.warc.gz")]
    else:
        inputs = [str(shared_path(*parts)) for parts in REAL_CRAWLS]
    return _build(tmp_path_factory.mktemp(f"clients-{request.param}"), inputs)
