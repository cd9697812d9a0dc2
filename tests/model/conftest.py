"""Model-test setup: 8 simulated CPU devices, and small m3w shards built from real photos and text.

The shards are written by ``model.data``'s writers in exactly the layouts the pipeline produces
(webdataset ``<doc_id>.json`` + ``<doc_id>.<position>.<ext>``; Parquet with ``image_bytes``), from
the photos in ``../shared/data/images`` and article texts from ``../shared/data/extraction``.
"""
from __future__ import annotations

import os
import subprocess
import sys

# Must precede the first jax import in this process (pytest loads this before the test modules).
if "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    # XLA:CPU compiles dominate these tests; a persistent cache makes reruns (and the subprocess
    # fallback below) reuse them. Keyed by the program, so a stale entry is never used.
    import tempfile

    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "m3w-jax-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import io  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.conftest import REPO, shared_path  # noqa: E402


_SUBPROCESS_RESULTS: dict[str, subprocess.CompletedProcess] = {}


def need_devices(n: int, nodeid: str) -> bool:
    """True when this process has ``n`` devices. Otherwise (jax was imported before this conftest
    could set the flag) runs ``nodeid`` once in a fresh process where the flag takes effect,
    asserts that it passed, and returns False: the caller then has nothing left to check."""
    import jax

    if jax.device_count() >= n:
        return True
    if nodeid not in _SUBPROCESS_RESULTS:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        _SUBPROCESS_RESULTS[nodeid] = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
        )
    r = _SUBPROCESS_RESULTS[nodeid]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return False


def _photos(n: int, side: int = 96) -> list[bytes]:
    """Real photos re-encoded as small JPEGs (keeps fixtures and tests fast)."""
    from PIL import Image

    folders = [shared_path("images", "imagededup_tests", "base_images"), shared_path("images", "skimage_data_photos")]
    files = sorted(p for f in folders for p in f.iterdir() if p.suffix.lower() in (".jpg", ".png") and p.name != "truncated.jpg")
    out = []
    for p in files:
        im = Image.open(p).convert("RGB")
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
        if len(out) == n:
            break
    return out


def _articles(n: int) -> list[str]:
    gt = json.loads(shared_path("extraction", "article_benchmark", "ground-truth.json").read_text())
    return [gt[k]["articleBody"] for k in sorted(gt)][:n]


def make_documents(n_docs: int = 24, images_per_doc: int = 3):
    """Documents interleaving real article paragraphs with real photos (ImageNode.data set)."""
    from schemas.document import Document, ImageNode, Provenance, TextNode

    photos = _photos(30)
    articles = _articles(n_docs)
    docs = []
    for d, body in enumerate(articles):
        paras = [p for p in body.split("\n") if p.strip()][: 2 * images_per_doc + 1] or [body[:200]]
        nodes = [TextNode(paras[0])]
        for i in range(images_per_doc):
            data = photos[(d * images_per_doc + i) % len(photos)]
            nodes.append(ImageNode(url=f"http://example.com/{d}/{i}.jpg", format="jpeg", sha256=f"{d}-{i}", data=data))
            for p in paras[1 + 2 * i : 3 + 2 * i]:
                nodes.append(TextNode(p))
        prov = Provenance("crawl.warc.gz", d * 1000, 900, "2024-01-01T00:00:00Z")
        docs.append(Document(url=f"http://example.com/{d}", provenance=prov, nodes=nodes, language="en"))
    return docs


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """{"wds": dir of 3 tar shards, "parquet": dir of 2 Parquet shards, "pairs": dir, "videos": dir}."""
    from model.data import write_pair_shard, write_parquet_shard, write_video_shard, write_wds_shard

    root = tmp_path_factory.mktemp("m3w_shards")
    docs = make_documents()
    out = {k: root / k for k in ("wds", "parquet", "pairs", "videos")}
    for p in out.values():
        p.mkdir()
    for s in range(3):
        write_wds_shard(str(out["wds"] / f"shard-{s:05d}.tar"), docs[s::3])
    for s in range(2):
        write_parquet_shard(str(out["parquet"] / f"shard-{s:05d}.parquet"), docs[s::2])
    photos = _photos(20)
    captions = [a.split(".")[0][:120] for a in _articles(20)]
    for s in range(2):
        write_pair_shard(str(out["pairs"] / f"pairs-{s:05d}.tar"), [(f"p{s}_{i}", photos[i], captions[i]) for i in range(s, 20, 2)])
        write_video_shard(
            str(out["videos"] / f"videos-{s:05d}.tar"),
            [(f"v{s}_{i}", photos[i : i + 4], captions[i]) for i in range(s, 12, 2)],
        )
    return out
