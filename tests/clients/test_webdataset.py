"""Plain ``webdataset`` iterates the wds and MMC4 tars with its own decoders, every document and image unchanged."""
from __future__ import annotations

import base64

import webdataset as wds

from schemas.document import ImageNode, from_json


def test_webdataset_decodes_documents_and_their_images(corpus):
    seen = set()
    images = 0
    for sample in wds.WebDataset(corpus.shards("wds"), shardshuffle=False).decode():
        doc = corpus.docs[sample["__key__"]]
        back = from_json(sample["json"])  # webdataset's JSON decoder; the schema validates it
        assert back.nodes == doc.nodes  # dataclass equality leaves the bytes out: compared next
        stored = sample["images.mp"]  # webdataset's msgpack decoder: aligned with the nodes
        assert stored == [getattr(n, "data", None) for n in doc.nodes]
        images += sum(1 for n, b in zip(doc.nodes, stored) if isinstance(n, ImageNode) and b is not None)
        seen.add(doc.doc_id)
    assert seen == set(corpus.docs) and images == corpus.images


def test_webdataset_reads_the_mmc4_json_members(corpus):
    seen = {}
    for sample in wds.WebDataset(corpus.shards("mmc4"), shardshuffle=False).decode():
        obj = sample["json"]
        seen[sample["__key__"]] = [base64.b64decode(i["image_base64"]) for i in obj["image_info"]]
    assert set(seen) == set(corpus.docs)
    for doc_id, data in seen.items():
        assert data == [n.data for n in corpus.docs[doc_id].nodes if isinstance(n, ImageNode) and n.data is not None]
