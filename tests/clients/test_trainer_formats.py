"""``train-flamingo`` reads every format: m3w's wds, MMC4 and Parquet shards, OBELICS's Parquet as
published (URLs only, images from an image cache) and MMC4's JSON lines as published."""
from __future__ import annotations

import collections
import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from model.data import cache_image, list_shards, read_shard
from schemas.arrow import OBELICS_COLUMNS, merged_positions
from schemas.document import ImageNode, TextNode
from tests.conftest import shared_path


def raw_documents(paths: list[str], image_cache: str | None = None, stats=None) -> dict[str, dict]:
    return {d["key"]: d for p in paths for d in read_shard(p, "interleaved", stats, image_cache)}


def expected(doc) -> tuple[list, list]:
    nodes = merged_positions(doc.nodes)
    return [n.text if isinstance(n, TextNode) else None for n in nodes], [getattr(n, "data", None) for n in nodes]


def test_the_trainer_reads_every_document_and_image_alike_from_wds_mmc4_and_parquet(corpus):
    views = {fmt: raw_documents(corpus.shards(fmt)) for fmt in ("wds", "mmc4", "parquet")}
    for fmt, docs in views.items():
        assert set(docs) == set(corpus.docs), fmt
    for doc_id, doc in corpus.docs.items():
        texts, images = expected(doc)
        assert views["wds"][doc_id]["texts"] == views["parquet"][doc_id]["texts"] == texts
        assert views["wds"][doc_id]["images"] == views["parquet"][doc_id]["images"] == images
        # MMC4 places each image before the text it is matched to: the same texts, the same images
        # in the same order (an image that ends a page moves before the last text).
        mmc4 = views["mmc4"][doc_id]
        assert [t for t in mmc4["texts"] if t] == [t for t in texts if t]
        assert [b for b in mmc4["images"] if b] == [b for b in images if b]


def obelics_as_published(corpus, folder) -> list[str]:
    """OBELICS's four columns only: what the HuggingFaceM4/OBELICS Parquet files hold."""
    os.makedirs(folder, exist_ok=True)
    out = []
    for path in corpus.shards("parquet"):
        dest = os.path.join(folder, os.path.basename(path))
        pq.write_table(pq.read_table(path, columns=list(OBELICS_COLUMNS)), dest)
        out.append(dest)
    return out


def test_obelics_parquet_as_published_takes_its_images_from_the_image_cache(corpus, tmp_path):
    shards = obelics_as_published(corpus, tmp_path / "obelics")
    cache = str(tmp_path / "image-cache")
    urls = {}
    for doc in corpus.docs.values():
        for n in doc.nodes:
            if isinstance(n, ImageNode) and n.data is not None:
                urls[n.url] = n.data
    missing = sorted(urls)[0]
    for url, data in urls.items():
        if url != missing:
            cache_image(cache, url, data)
    stats = collections.Counter()
    docs = raw_documents(shards, cache, stats)
    assert len(docs) == len(corpus.docs)
    got = sorted((t for d in docs.values() for t in d["texts"] if t))
    assert got == sorted(t for d in corpus.docs.values() for t in expected(d)[0] if t)
    by_url = collections.Counter(b for d in docs.values() for b in d["images"] if b)
    want = collections.Counter(b for d in corpus.docs.values() for n in d.nodes if isinstance(n, ImageNode) and n.url != missing
                               for b in [n.data] if b)
    assert by_url == want
    # An image the cache lacks is left out and counted, once per place it is cited.
    cited = sum(1 for d in corpus.docs.values() for n in d.nodes if isinstance(n, ImageNode) and n.url == missing)
    assert stats["dropped_image_not_cached"] == cited


def test_mmc4_as_published_trains_with_images_from_the_cache(tmp_path):
    """MMC4's own JSON lines (no bytes) with images found by their ``image_name``."""
    from model.data import DataConfig, Loader
    from model.tokenizer import byte_tokenizer

    sample = shared_path("formats", "mmc4_shard_sample", "docs_no_face_shard_151_v3.first_docs.jsonl")
    cache = tmp_path / "images"
    cache.mkdir()
    rng = np.random.default_rng(0)
    names = [i["image_name"] for line in open(sample) for i in json.loads(line)["image_info"]]
    for name in names[::2]:  # half of them cached: the others are counted as missing
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
        (cache / name).write_bytes(buf.getvalue())
    cfg = DataConfig(image_size=16, max_tokens=64, shuffle_buffer=0, workers=1, image_cache=str(cache))
    loader = Loader(list_shards(str(sample)), "interleaved", byte_tokenizer(), 4, cfg)
    batch = next(iter(loader))
    assert batch["images"].shape == (4, 5, 1, 16, 16, 3) and batch["num_images"].min() >= 1
    assert loader.stats["dropped_image_not_cached"] > 0


def test_train_flamingo_trains_on_all_formats_at_once(corpus, tmp_path):
    from model.train import main

    shards = [str(corpus.root / "wds"), str(corpus.root / "mmc4"), str(corpus.root / "parquet"),
              *obelics_as_published(corpus, tmp_path / "obelics")]
    cache = str(tmp_path / "image-cache")
    for doc in corpus.docs.values():
        for n in doc.nodes:
            if isinstance(n, ImageNode) and n.data is not None:
                cache_image(cache, n.url, n.data)
    out = tmp_path / "run"
    args = ["--shards", *shards, "--image-cache", cache, "--config", "tiny", "--steps", "2", "--batch-size", "8",
            "--max-tokens", "64", "--vocab-size", "300", "--shuffle-buffer", "4", "--workers", "1",
            "--no-progress", "--out", str(out)]
    assert main(args) == 0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and all(np.isfinite(r["loss"]) for r in recs)
