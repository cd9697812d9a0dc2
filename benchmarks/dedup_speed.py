"""Speed of the dedup building blocks, each against an anchor run in the same process.

    .venv/bin/python -m benchmarks.dedup_speed [--repeat 3]

1. MinHash signatures of real page text (the article-extraction benchmark's 121 article bodies,
   ../shared/data/extraction) with the build's defaults (5-gram shingles, 14 x 8 = 112 entries):
   ``dedup.minhash.minhash_signatures`` over batches of 256 vs datasketch 2.0 ``MinHash`` fed with
   the same shingles, both through ``update_batch`` (its vectorised path) and ``update`` (one call
   per shingle, as most code uses it). Shingling is inside both timings.
2. Evaluation-index queries, one thread: 64-bit codes, nearest neighbour (k=1) against 100,000
   images indexed once (IndexBinaryFlat) and with the 9 crop variants the build uses (1,000,000
   entries: IndexBinaryFlat, and IndexBinaryMultiHash as ``EvalIndex`` picks it, exact within 8).
   Anchor: the same flat search in numpy (XOR + popcount table). Codes are random bytes (the
   time of a flat scan does not depend on them; a multi-hash probe does, which random codes
   flatter slightly as buckets are evenly filled).
3. Decontaminate's per-image query codes from stored bytes (decode, border check, pHash) for the
   UKBench photos at 640 px.
Figures are per core: best CPU time (``time.process_time``) of ``--repeat`` runs, every timed
part on one thread; the machine's load average is printed beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import faiss
import numpy as np

from dedup.eval_index import EvalIndex
from dedup.minhash import minhash_signatures

DATA = os.environ.get("M3W_SHARED_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
_WORD = re.compile(r"[0-9a-z\x80-\U0010ffff]+")
NUM_PERM = 112


def _best(fn, repeat: int) -> float:
    """Smallest CPU time of ``repeat`` runs: per-core throughput, fair on a shared, loaded machine
    (every timed part runs on one thread)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def _shingles(text: str) -> list[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) < 5:
        return [" ".join(words).encode()] if words else []
    return [" ".join(words[i : i + 5]).encode() for i in range(len(words) - 4)]


def bench_minhash(repeat: int) -> dict:
    from datasketch import MinHash

    with open(os.path.join(DATA, "extraction", "article_benchmark", "ground-truth.json")) as f:
        texts = [v["articleBody"] for v in json.load(f).values()]
    docs = texts * 4  # 484 documents
    mb = sum(len(t.encode()) for t in docs) / 1e6

    def ours() -> None:
        for i in range(0, len(docs), 256):
            minhash_signatures(docs[i : i + 256], NUM_PERM, 5, 1)

    def ds_batch() -> None:
        for t in docs:
            m = MinHash(num_perm=NUM_PERM, seed=1)
            m.update_batch(_shingles(t))

    few = docs[: len(texts)]

    def ds_update() -> None:
        for t in few:
            m = MinHash(num_perm=NUM_PERM, seed=1)
            for s in _shingles(t):
                m.update(s)

    t_ours, t_batch, t_update = _best(ours, repeat), _best(ds_batch, repeat), _best(ds_update, max(1, repeat - 1))
    out = {
        "documents": len(docs),
        "mean_bytes": int(mb * 1e6 / len(docs)),
        "ours_docs_per_s": len(docs) / t_ours,
        "ours_mb_per_s": mb / t_ours,
        "datasketch_update_batch_docs_per_s": len(docs) / t_batch,
        "datasketch_update_docs_per_s": len(few) / t_update,
    }
    out["ratio_vs_update_batch"] = out["ours_docs_per_s"] / out["datasketch_update_batch_docs_per_s"]
    out["ratio_vs_update"] = out["ours_docs_per_s"] / out["datasketch_update_docs_per_s"]
    return out


_POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def bench_index(repeat: int) -> dict:
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    images = 100_000
    q = rng.integers(0, 256, size=(2_000, 8), dtype=np.uint8)
    out = {}
    for views in (1, 10):
        codes = rng.integers(0, 256, size=(images * views, 8), dtype=np.uint8)
        flat = faiss.IndexBinaryFlat(64)
        flat.add(codes)
        out[f"flat_{views}_views_qps"] = len(q) / _best(lambda: flat.search(q, 1), repeat)
        if views == 1:
            sub = q[:200]

            def numpy_scan() -> None:
                for row in sub:
                    _POP[np.bitwise_xor(codes, row)].sum(axis=1, dtype=np.int32).argmin()

            out["numpy_1_view_qps"] = len(sub) / _best(numpy_scan, repeat)
        else:
            index = EvalIndex(ids=[str(i) for i in range(images)], sets=["bench"] * images)
            index.add_codes("phash64", codes, np.repeat(np.arange(images), views))
            kind = type(index.binary["phash64"].index).__name__
            out[f"evalindex_{views}_views_kind"] = kind
            out[f"evalindex_{views}_views_qps"] = len(q) / _best(lambda: index.search(q, "phash64", 8), repeat)
    out["ratio_flat_vs_numpy"] = out["flat_1_views_qps"] / out["numpy_1_view_qps"]
    # 256-bit codes (the calibrated feature): 100,000 images, once and with 10 views.
    q256 = rng.integers(0, 256, size=(500, 32), dtype=np.uint8)
    for views in (1, 10):
        flat = faiss.IndexBinaryFlat(256)
        flat.add(rng.integers(0, 256, size=(images * views, 32), dtype=np.uint8))
        out[f"flat256_{views}_views_qps"] = len(q256) / _best(lambda: flat.search(q256, 1), repeat)
    return out


def bench_features(repeat: int) -> dict:
    """Per-image cost of Decontaminate's query codes, from stored bytes (decode included)."""
    import glob
    import io

    from PIL import Image

    from dedup import phash

    blobs = []
    for p in sorted(glob.glob(os.path.join(DATA, "images", "imagededup_tests", "base_images", "*.jpg"))):
        img = Image.open(p).convert("RGB")
        img.thumbnail((640, 640))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    out = {}
    for feature in ("phash64", "phash256"):
        t = _best(lambda: [phash.query_codes(feature, phash.decode_rgb(b), None, True) for b in blobs], repeat)
        out[f"{feature}_images_per_s"] = len(blobs) / t
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    res = {
        "load_average_1min": load,
        "cores": os.cpu_count(),
        "minhash": bench_minhash(args.repeat),
        "index": bench_index(args.repeat),
        "decontaminate_codes": bench_features(args.repeat),
    }
    res["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
