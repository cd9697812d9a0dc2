"""Shard writers: readable by webdataset and pyarrow, deterministic, never partial under a final name."""
from __future__ import annotations

import io
import json
import os

import apache_beam as beam
import msgpack
import numpy as np
import pyarrow.parquet as pq
import webdataset as wds
from apache_beam.testing.test_pipeline import TestPipeline
from PIL import Image

from pipeline.shards import WriteShards, atomic_write
from pipeline.verify import verify
from schemas.arrow import from_row
from schemas.document import Document, ImageNode, Provenance, TextNode


def _jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def make_docs(n: int) -> list[Document]:
    docs = []
    for i in range(n):
        data = _jpeg(i)
        prov = Provenance("a.warc.gz", 100 * i, 90, "2024-01-01T00:00:00Z", f"<urn:{i}>")
        docs.append(
            Document(
                url=f"http://example.org/{i}",
                provenance=prov,
                nodes=[
                    TextNode(f"text before {i}"),
                    ImageNode(f"http://example.org/{i}.jpg", sha256=f"{i:064x}", width=60, height=40, format="jpeg", data=data),
                    TextNode(f"text after {i}"),
                ],
            )
        )
    return docs


def run_write(out: str, docs: list[Document], shard_size: int) -> None:
    with TestPipeline() as p:
        _ = p | beam.Create(docs) | WriteShards(out, ["wds", "parquet"], shard_size)


def test_shards_read_back_with_webdataset_and_pyarrow(tmp_path):
    docs = make_docs(7)
    out = str(tmp_path / "out")
    run_write(out, docs, shard_size=3)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["num_shards"] == 3
    assert manifest["totals"]["wds"]["documents"] == 7 and manifest["totals"]["parquet"]["images"] == 7

    tars = sorted(os.path.join(out, "wds", f) for f in os.listdir(os.path.join(out, "wds")))
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    assert len(samples) == 7
    by_id = {d.doc_id: d for d in docs}
    for s in samples:
        meta = json.loads(s["json"])
        doc = by_id[s["__key__"]]
        assert meta["texts"] == doc.texts
        assert msgpack.unpackb(s["images.mp"]) == [None, doc.nodes[1].data, None]  # aligned with the nodes

    rows = [r for f in sorted(os.listdir(os.path.join(out, "parquet"))) for r in pq.read_table(os.path.join(out, "parquet", f)).to_pylist()]
    assert sorted(r["doc_id"] for r in rows) == sorted(by_id)
    for r in rows:
        assert from_row(r).nodes[1].data == by_id[r["doc_id"]].nodes[1].data
    assert verify(out) == []


def test_same_documents_give_byte_identical_shards(tmp_path):
    docs = make_docs(9)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run_write(a, docs, shard_size=4)
    run_write(b, list(reversed(docs)), shard_size=4)  # arrival order must not matter
    assert open(os.path.join(a, "manifest.json"), "rb").read() == open(os.path.join(b, "manifest.json"), "rb").read()
    for folder in ("wds", "parquet"):
        names = sorted(os.listdir(os.path.join(a, folder)))
        assert names == sorted(os.listdir(os.path.join(b, folder)))
        for n in names:
            assert open(os.path.join(a, folder, n), "rb").read() == open(os.path.join(b, folder, n), "rb").read()


def test_failed_write_leaves_no_file_under_the_final_name(tmp_path):
    path = str(tmp_path / "shard.tar")

    def boom(f):
        f.write(b"half a shard")
        raise RuntimeError("worker died")

    try:
        atomic_write(path, boom)
    except RuntimeError:
        pass
    assert os.listdir(tmp_path) == []


def test_verify_catches_a_flipped_byte(tmp_path):
    out = str(tmp_path / "out")
    run_write(out, make_docs(3), shard_size=10)
    shard = os.path.join(out, "wds", os.listdir(os.path.join(out, "wds"))[0])
    blob = bytearray(open(shard, "rb").read())
    blob[700] ^= 0x01
    open(shard, "wb").write(bytes(blob))
    errors = verify(out)
    assert errors and "sha256" in errors[0]
