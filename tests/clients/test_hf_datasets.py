"""Hugging Face ``datasets``, pandas and pyarrow read every m3w output as their users would.

Parquet: OBELICS's documented usage (cast to OBELICS's features, ``json.loads(ex["metadata"])``),
``image_bytes`` as ``Sequence(Image())``. Webdataset and MMC4 tars: ``load_dataset("webdataset")``.
Every document and every image must come through unchanged (bytes equal to what the pipeline
hashed).
"""
from __future__ import annotations

import base64
import hashlib
import json

import datasets
import pandas as pd
import pyarrow.parquet as pq
from datasets import Features, Image, Sequence, Value

from schemas.arrow import TEXT_JOINER, merged_positions
from schemas.document import Document, ImageNode, TextNode

# The features on the HuggingFaceM4/OBELICS dataset card.
OBELICS_FEATURES = Features(
    {
        "images": Sequence(Value("string")),
        "metadata": Value("string"),
        "general_metadata": Value("string"),
        "texts": Sequence(Value("string")),
    }
)


def obelics_view(doc: Document) -> tuple[list, list]:
    nodes = merged_positions(doc.nodes)
    return ([n.text if isinstance(n, TextNode) else None for n in nodes],
            [n.url if isinstance(n, ImageNode) else None for n in nodes])


def test_parquet_casts_to_obelics_features_and_reads_as_obelics_documents_it(corpus):
    ds = datasets.load_dataset("parquet", data_files=corpus.shards("parquet"), split="train")
    assert len(ds) == len(corpus.docs)
    obelics = ds.select_columns(list(OBELICS_FEATURES)).cast(OBELICS_FEATURES)
    assert obelics.features == OBELICS_FEATURES
    for ex, doc_id in zip(obelics, ds["doc_id"]):
        doc = corpus.docs[doc_id]
        texts, images = obelics_view(doc)
        assert ex["texts"] == texts and ex["images"] == images
        assert all((t is None) != (u is None) for t, u in zip(ex["texts"], ex["images"]))
        assert not any(a is not None and b is not None for a, b in zip(ex["texts"], ex["texts"][1:]))
        # Every paragraph is there, in order, and each text position is its paragraphs joined.
        assert TEXT_JOINER.join(t for t in ex["texts"] if t) == TEXT_JOINER.join(n.text for n in doc.nodes if isinstance(n, TextNode))
        meta = json.loads(ex["metadata"])  # OBELICS's documented usage
        assert len(meta) == len(ex["texts"])
        for m, url in zip(meta, ex["images"]):
            assert (m is None) == (url is None)
            if m is not None:
                assert m["src"] == url and m["document_url"] == doc.url
        general = json.loads(ex["general_metadata"])
        assert general == {"url": doc.url, "warc_filename": doc.provenance.warc_filename,
                           "warc_record_offset": doc.provenance.warc_record_offset,
                           "warc_record_length": doc.provenance.warc_record_length}


def test_parquet_image_bytes_cast_to_a_sequence_of_images(corpus):
    ds = datasets.load_dataset("parquet", data_files=corpus.shards("parquet"), split="train")
    raw = ds.cast_column("image_bytes", Sequence(Image(decode=False)))
    decoded = ds.cast_column("image_bytes", Sequence(Image()))
    seen = 0
    for ex, ex_decoded in zip(raw, decoded):
        nodes = merged_positions(corpus.docs[ex["doc_id"]].nodes)
        assert len(ex["image_bytes"]) == len(nodes)
        for node, img, pil in zip(nodes, ex["image_bytes"], ex_decoded["image_bytes"]):
            if isinstance(node, ImageNode) and node.data is not None:
                assert img["bytes"] == node.data and hashlib.sha256(img["bytes"]).hexdigest() == node.sha256
                assert pil.size == (node.width, node.height)
                seen += 1
            else:
                assert img is None and pil is None
    assert seen == corpus.images


def test_pandas_and_pyarrow_read_the_parquet(corpus):
    for path in corpus.shards("parquet"):
        df = pd.read_parquet(path)
        table = pq.read_table(path)
        assert list(df.columns) == table.column_names and table.schema.metadata[b"m3w_schema_version"] == b"1.2"
        for row in df.itertuples():
            doc = corpus.docs[row.doc_id]
            meta = json.loads(row.metadata)
            images = [im for im in row.image_bytes if im is not None]
            assert images == [n.data for n in doc.nodes if isinstance(n, ImageNode) and n.data is not None]
            assert [m["sha256"] for m in meta if m] == [n.sha256 for n in doc.nodes if isinstance(n, ImageNode)]


def test_webdataset_tars_load_with_the_datasets_webdataset_builder(corpus):
    ds = datasets.load_dataset("webdataset", data_files={"train": corpus.shards("wds")}, split="train")
    assert len(ds) == len(corpus.docs)
    assert set(ds.column_names) == {"__key__", "__url__", "json", "images.mp"}
    decoded = ds.cast_column("images.mp", Sequence(Image()))
    seen = 0
    for ex, ex_decoded in zip(ds, decoded):
        doc = corpus.docs[ex["__key__"]]
        assert ex["json"]["doc_id"] == doc.doc_id and ex["json"]["texts"] == doc.texts
        assert [n["type"] for n in ex["json"]["nodes"]] == ["image" if isinstance(n, ImageNode) else "text" for n in doc.nodes]
        assert ex["images.mp"] == [getattr(n, "data", None) for n in doc.nodes]
        for node, pil in zip(doc.nodes, ex_decoded["images.mp"]):
            if isinstance(node, ImageNode) and node.data is not None:
                assert pil.size == (node.width, node.height)
                seen += 1
    assert seen == corpus.images


def expected_mmc4(doc: Document) -> tuple[list[str], list[tuple[bytes, int]]]:
    """MMC4's view of a document: its paragraphs, and each image with the text it sits before."""
    texts = [n.text for n in doc.nodes if isinstance(n, TextNode)]
    images, seen = [], 0
    for node in doc.nodes:
        if isinstance(node, TextNode):
            seen += 1
        elif node.data is not None:
            images.append((node.data, min(seen, len(texts) - 1)))
    return texts, images


def test_mmc4_tars_load_with_the_datasets_webdataset_builder(corpus):
    ds = datasets.load_dataset("webdataset", data_files={"train": corpus.shards("mmc4")}, split="train")
    assert len(ds) == len(corpus.docs) and set(ds.column_names) == {"__key__", "__url__", "json"}
    seen = 0
    for ex in ds:
        obj = ex["json"]
        doc = corpus.docs[ex["__key__"]]
        texts, images = expected_mmc4(doc)
        assert obj["url"] == doc.url and obj["text_list"] == texts
        got = [(base64.b64decode(i["image_base64"]), i["matched_text_index"]) for i in obj["image_info"] if i["image_base64"]]
        assert got == images
        for info, row in zip(obj["image_info"], obj["similarity_matrix"]):
            assert len(row) == len(texts) and max(range(len(row)), key=row.__getitem__) == info["matched_text_index"]
            assert info["matched_by"] == "dom_order" and info["raw_url"]
        seen += len(got)
    assert seen == corpus.images
