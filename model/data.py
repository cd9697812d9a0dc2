"""Training batches from m3w shards: streaming readers, sample building, deterministic loading.

Three kinds of data feed the trainer:

* **interleaved** documents, from any of (docs/FORMATS.md):
  - m3w webdataset shards (``<doc_id>.json`` = ``schemas.document.dumps`` plus ``<doc_id>.images.mp``,
    or the 1.0/1.1 layout with a ``<doc_id>.<position>.<ext>`` member per image);
  - MMC4 webdataset shards (one ``.json`` per document: ``text_list``, ``image_info`` with
    ``image_base64``), m3w's ``--format mmc4`` or anyone's; MMC4 as published (``.jsonl``, no bytes);
  - Parquet shards with OBELICS's columns (``texts``, ``images``, ...): m3w's, with ``image_bytes``,
    or OBELICS as published, with image URLs only;
  images a shard holds no bytes for are taken from ``DataConfig.image_cache`` (``cache_image``
  says where a URL's bytes go) or left out, counted in ``stats["dropped_image_not_cached"]``;
  every reader yields the same raw element: texts and image bytes aligned, consecutive texts
  merged as OBELICS merges them, so a document gives the same samples from every format;
* image–text **pairs**: tar shards of ``<key>.jpg|png|webp`` + ``<key>.txt``;
* video–text **clips**: tar shards of ``<key>.<frame>.jpg`` frames (or one ``<key>.npy`` uint8
  ``[T, H, W, 3]``) + ``<key>.txt``.

The stream of one dataset on one host is a pure function of (files, seed, host index, host
count): shards are permuted per epoch by the seed, split across hosts, read in order and passed
through a seeded shuffle buffer. Element ``j`` of that stream is turned into a sample with an RNG
seeded by ``(seed, host, j)``, so the samples do not depend on how many loader workers decode
them. The loader's position is the number of stream elements consumed; resuming skips that many
raw elements (reading bytes, no decoding) and continues bit-identically.

A batch is a dict of numpy arrays (B = batch size, M = images per sample, T = frames, S = image
side, L = tokens)::

    images          uint8   [B, M, T, S, S, 3]   zero where a sample has fewer images
    input_ids       int32   [B, L]               pad-filled
    attention_mask  int32   [B, L]               1 on real tokens
    targets         int32   [B, L]               targets[t] = input_ids[t + 1]
    loss_mask       float32 [B, L]               1 where targets[t] is a text token to predict
    num_images      int32   [B]
"""
from __future__ import annotations

import base64
import collections
import dataclasses
import glob
import hashlib
import io
import json
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from model.tokenizer import EOC_TOKEN, IMAGE_TOKEN, TextTokenizer
from schemas.arrow import TEXT_JOINER
from schemas.samples import mmc4_positions, tar_add, unpack_images

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
KINDS = ("interleaved", "pairs", "videos")


@dataclass(frozen=True)
class DataConfig:
    """How samples are built; defaults follow the Flamingo paper (REFERENCE.md §1)."""

    max_images: int = 5  # images per interleaved sequence (Flamingo: 5)
    max_tokens: int = 256  # text tokens per sequence (Flamingo: 256)
    image_size: int = 320  # side of the square crop fed to the vision encoder (Flamingo: 320)
    frames: int = 8  # frames per video clip (Flamingo: 8 at 1 fps)
    p_next: float = 0.5  # image-index augmentation: text attends to the next image (Flamingo: 0.5)
    p_leading_space: float = 0.5  # leading-space augmentation (Flamingo: 50% of text samples)
    random_crop: bool = True  # random vs centre crop after resizing the short side
    random_flip: bool = True  # random horizontal flip (Flamingo's augmentation)
    shuffle_buffer: int = 256  # raw elements held for shuffling; 0 = file order
    seed: int = 0
    workers: int = 2  # threads decoding images / tokenizing (PIL and tokenizers release the GIL)
    prefetch_batches: int = 2  # batches built ahead of the training step
    image_cache: str | None = None  # folder of image bytes for URL-only shards (``cache_image``)


class Drop(Exception):
    """A raw element that yields no sample; ``reason`` names the counter ``dropped_<reason>``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Shard discovery and raw readers (no decoding)


def list_shards(spec: str | os.PathLike | Iterable[str]) -> list[str]:
    """Shard files from a directory, a glob, a file, or a list of those; sorted, de-duplicated.

    Only data files are taken from a directory: ``*.tar``, ``*.tar.gz``, ``*.tgz``, ``*.parquet``
    (MMC4's ``.jsonl`` only when named or globbed: a corpus folder's rejects are JSON lines too).
    An m3w corpus folder (it has ``manifest.json``) holds the same documents once per format: only
    its first format of wds, mmc4, parquet is read, so no document is trained on twice.
    """
    if isinstance(spec, (str, os.PathLike)):
        spec = [os.fspath(spec)]
    out: set[str] = set()
    for s in spec:
        if os.path.isdir(s) and os.path.exists(os.path.join(s, "manifest.json")):
            fmt = next((f for f in ("wds", "mmc4", "parquet") if os.path.isdir(os.path.join(s, f))), None)
            out.update(list_shards(os.path.join(s, fmt)) if fmt else [])
        elif os.path.isdir(s):
            for pat in ("*.tar", "*.tar.gz", "*.tgz", "*.parquet"):
                out.update(glob.glob(os.path.join(s, "**", pat), recursive=True))
        elif any(c in s for c in "*?["):
            out.update(glob.glob(s, recursive=True))
        elif os.path.isfile(s):
            out.add(s)
        else:
            raise FileNotFoundError(f"no shards at {s}")
    return sorted(out)


def _tar_members(path: str) -> Iterator[dict[str, Any]]:
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    with open(path, "rb") as f:
        members = ({**m, "__url__": path} for m in tar_file_iterator(f))
        yield from group_by_keys(members)


def cache_path(image_cache: str, url: str) -> str:
    """Where the image cache holds a URL's bytes: ``<cache>/<sha256 of the URL, hex>`` (any format)."""
    return os.path.join(image_cache, hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest())


def cache_image(image_cache: str, url: str, data: bytes) -> str:
    """Store ``data`` as the cached bytes of ``url`` (e.g. from img2dataset's output); returns the path."""
    os.makedirs(image_cache, exist_ok=True)
    path = cache_path(image_cache, url)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def _cached(image_cache: str | None, url: str | None, name: str | None, stats: collections.Counter | None) -> bytes | None:
    """Bytes of an image a shard holds no bytes for: by URL, else (MMC4) by ``image_name``."""
    if image_cache:
        for path in ([cache_path(image_cache, url)] if url else []) + ([os.path.join(image_cache, name)] if name else []):
            try:
                with open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                pass
    _count(stats, "dropped_image_not_cached")
    return None


def merge_texts(texts: list[str | None], images: list[Any]) -> tuple[list[str | None], list[Any]]:
    """Consecutive text positions merged into one, joined as OBELICS joins them (``TEXT_JOINER``).

    A position with neither text nor image (an image whose bytes are unknown) still separates texts,
    as it does in the Parquet shards.
    """
    out_t: list[str | None] = []
    out_i: list[Any] = []
    for text, img in zip(texts, images):
        if text is not None and out_t and out_t[-1] is not None:
            out_t[-1] = out_t[-1] + TEXT_JOINER + text
            continue
        out_t.append(text)
        out_i.append(img)
    return out_t, out_i


def _document(key: str, texts: list[str | None], images: list[Any]) -> dict[str, Any]:
    texts, images = merge_texts(texts, images)
    return {"key": key, "texts": texts, "images": images}


def _mmc4_document(obj: dict[str, Any], key: str, image_cache: str | None, stats: collections.Counter | None) -> dict[str, Any]:
    texts, infos = mmc4_positions(obj)
    images = []
    for info in infos:
        if info is None:
            images.append(None)
        elif "image_base64" in info:
            images.append(base64.b64decode(info["image_base64"]))
        else:
            images.append(_cached(image_cache, info.get("raw_url"), info.get("image_name"), stats))
    return _document(obj.get("doc_id") or key, texts, images)


def read_wds_documents(
    path: str, stats: collections.Counter | None = None, image_cache: str | None = None
) -> Iterator[dict[str, Any]]:
    """Raw interleaved documents of one webdataset shard: m3w's (``nodes``) or MMC4's (``text_list``).

    Yields ``{"key", "texts": [str|None], "images": [bytes|None]}``, aligned, consecutive texts
    merged (``merge_texts``); an image whose bytes are absent has ``None``. Tar groups without a
    document are counted in ``stats["dropped_incomplete_sample"]``.
    """
    for sample in _tar_members(path):
        if "json" not in sample:
            _count(stats, "dropped_incomplete_sample")
            continue
        doc = json.loads(sample["json"])
        if "text_list" in doc:
            yield _mmc4_document(doc, sample["__key__"], image_cache, stats)
            continue
        nodes = doc["nodes"]
        data = unpack_images(sample, len(nodes))
        texts = [n.get("text") if n["type"] == "text" else None for n in nodes]
        images = [data[i] if n["type"] == "image" else None for i, n in enumerate(nodes)]
        yield _document(doc.get("doc_id", sample["__key__"]), texts, images)


def read_mmc4_jsonl(path: str, stats: collections.Counter | None = None, image_cache: str | None = None) -> Iterator[dict[str, Any]]:
    """MMC4 as published: one JSON document per line, images by ``image_name`` or URL in the cache."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                yield _mmc4_document(json.loads(line), f"{os.path.basename(path)}:{i}", image_cache, stats)


def read_parquet_documents(
    path: str, batch_rows: int = 64, stats: collections.Counter | None = None, image_cache: str | None = None
) -> Iterator[dict[str, Any]]:
    """Raw interleaved documents of one Parquet shard with OBELICS's ``texts``/``images`` columns
    (same element shape as ``read_wds_documents``): m3w's, whose ``image_bytes`` hold the images,
    or OBELICS's as published, whose images come from ``image_cache`` by URL."""
    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    columns = [c for c in ("doc_id", "texts") if c in names] + ["image_bytes" if "image_bytes" in names else "images"]
    row = 0
    for rb in pf.iter_batches(batch_size=batch_rows, columns=columns):
        cols = rb.to_pydict()
        for i, texts in enumerate(cols["texts"]):
            key = cols["doc_id"][i] if "doc_id" in cols else f"{os.path.basename(path)}:{row}"
            row += 1
            if "image_bytes" in cols:
                images = list(cols["image_bytes"][i])
            else:
                images = [_cached(image_cache, url, None, stats) if url else None for url in cols["images"][i]]
            yield _document(key, list(texts), images)


def read_pairs(path: str, stats: collections.Counter | None = None) -> Iterator[dict[str, Any]]:
    """Raw image–caption pairs: ``{"key", "texts": [caption], "images": [bytes]}``."""
    for sample in _tar_members(path):
        img = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
        text = sample.get("txt")
        if img is None or text is None:
            _count(stats, "dropped_incomplete_sample")
            continue
        yield {"key": sample["__key__"], "texts": [text.decode("utf-8")], "images": [img]}


def read_videos(path: str, stats: collections.Counter | None = None) -> Iterator[dict[str, Any]]:
    """Raw video clips: ``{"key", "texts": [caption], "frames": [bytes, ...] | ndarray[T,H,W,3]}``."""
    for sample in _tar_members(path):
        text = sample.get("txt")
        if text is None:
            _count(stats, "dropped_incomplete_sample")
            continue
        if "npy" in sample:
            frames: Any = np.load(io.BytesIO(sample["npy"]), allow_pickle=False)
        else:
            numbered = []
            for suffix, value in sample.items():
                head, _, ext = suffix.partition(".")
                if head.isdigit() and ext in IMAGE_EXTS:
                    numbered.append((int(head), value))
            frames = [v for _, v in sorted(numbered)]
        yield {"key": sample["__key__"], "texts": [text.decode("utf-8")], "frames": frames}


def _count(stats: collections.Counter | None, key: str) -> None:
    if stats is not None:
        stats[key] += 1


def read_shard(
    path: str, kind: str, stats: collections.Counter | None = None, image_cache: str | None = None
) -> Iterator[dict[str, Any]]:
    if kind == "interleaved":
        if path.endswith(".parquet"):
            return read_parquet_documents(path, stats=stats, image_cache=image_cache)
        if path.endswith(".jsonl"):
            return read_mmc4_jsonl(path, stats, image_cache)
        return read_wds_documents(path, stats, image_cache)
    if kind == "pairs":
        return read_pairs(path, stats)
    if kind == "videos":
        return read_videos(path, stats)
    raise ValueError(f"unknown data kind {kind!r} (expected one of {KINDS})")


# ---------------------------------------------------------------------------------------------
# Shard writers: the layouts above, for fixtures, benchmarks and users converting their own data


def write_wds_shard(path: str, docs: Iterable[Any]) -> int:
    """Write ``schemas.document.Document``s (image bytes in ``ImageNode.data``) as an m3w wds shard."""
    from schemas.samples import write_wds

    with open(path, "wb") as f:
        return write_wds(f, docs)


def write_mmc4_shard(path: str, docs: Iterable[Any]) -> int:
    """Write documents as an MMC4 webdataset shard (``schemas.samples.mmc4_json``)."""
    from schemas.samples import write_mmc4

    with open(path, "wb") as f:
        return write_mmc4(f, docs)


def write_parquet_shard(path: str, docs: Iterable[Any]) -> int:
    """Write documents as a Parquet shard with the pipeline's Arrow schema (``schemas.arrow``)."""
    from schemas.arrow import ARROW_SCHEMA, to_row

    rows = [to_row(d) for d in docs]
    pq.write_table(pa.Table.from_pylist(rows, schema=ARROW_SCHEMA), path)
    return len(rows)


def write_pair_shard(path: str, pairs: Iterable[tuple[str, bytes, str]]) -> int:
    """Write ``(key, jpeg_bytes, caption)`` pairs as ``<key>.jpg`` + ``<key>.txt``."""
    import tarfile

    n = 0
    with tarfile.open(path, "w") as tar:
        for key, img, caption in pairs:
            tar_add(tar, f"{key}.jpg", img)
            tar_add(tar, f"{key}.txt", caption.encode("utf-8"))
            n += 1
    return n


def write_video_shard(path: str, clips: Iterable[tuple[str, list[bytes], str]]) -> int:
    """Write ``(key, [jpeg frame bytes], caption)`` clips as ``<key>.<NNN>.jpg`` + ``<key>.txt``."""
    import tarfile

    n = 0
    with tarfile.open(path, "w") as tar:
        for key, frames, caption in clips:
            for i, fr in enumerate(frames):
                tar_add(tar, f"{key}.{i:03d}.jpg", fr)
            tar_add(tar, f"{key}.txt", caption.encode("utf-8"))
            n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Images


def load_image(data: bytes | np.ndarray, size: int, rng: np.random.Generator | None, cfg: DataConfig) -> np.ndarray:
    """Decode, resize the short side to ``size``, crop ``size``×``size`` (random when training), maybe flip.

    Returns uint8 [size, size, 3]. Raises ``Drop("undecodable_image")`` on bad bytes.
    """
    if isinstance(data, np.ndarray):
        img = Image.fromarray(data)
    else:
        try:
            img = Image.open(io.BytesIO(data))
            img.draft("RGB", (size, size))  # JPEG: decode at reduced scale when the image is large
            img = img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
            raise Drop("undecodable_image") from e
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    if rng is not None and cfg.random_crop:
        x0, y0 = int(rng.integers(0, nw - size + 1)), int(rng.integers(0, nh - size + 1))
    else:
        x0, y0 = (nw - size) // 2, (nh - size) // 2
    arr = np.asarray(img.crop((x0, y0, x0 + size, y0 + size)), dtype=np.uint8)
    if rng is not None and cfg.random_flip and rng.random() < 0.5:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------------------------------
# Samples


def _clean(text: str) -> str:
    # Web text that spells a special token must not become one.
    return text.replace(IMAGE_TOKEN, "image").replace(EOC_TOKEN, "endofchunk")


def _text_for(text: str, space: bool) -> str:
    text = _clean(text).strip()
    return (" " + text) if space else text


def finish_sample(ids: list[int], images: np.ndarray, tok: TextTokenizer, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Pad ``ids`` to ``max_tokens`` and build targets and the loss mask.

    ``images`` is uint8 [M, T, S, S, 3] already padded. Targets are the next token; ``<image>``
    and pad are never targets. Raises ``Drop("all_labels_masked")`` when no text token is left to
    predict (such samples give NaN losses in OpenFlamingo).
    """
    L = cfg.max_tokens
    ids = ids[:L]
    n = len(ids)
    input_ids = np.full(L, tok.pad_id, np.int32)
    input_ids[:n] = ids
    attention = np.zeros(L, np.int32)
    attention[:n] = 1
    targets = np.full(L, tok.pad_id, np.int32)
    targets[: n - 1] = input_ids[1:n]
    loss_mask = np.zeros(L, np.float32)
    loss_mask[: n - 1] = 1.0
    loss_mask[(targets == tok.image_id) | (targets == tok.pad_id)] = 0.0
    # Only <|endofchunk|> left to predict carries no language signal: dropped with the all-masked ones.
    if not ((loss_mask > 0) & (targets != tok.eoc_id)).any():
        raise Drop("all_labels_masked")
    return {
        "images": images,
        "input_ids": input_ids,
        "attention_mask": attention,
        "targets": targets,
        "loss_mask": loss_mask,
        "num_images": np.int32(int((input_ids == tok.image_id).sum())),
    }


def chunk_document(texts: list[str | None], images: list[Any], attend_next: bool) -> list[tuple[Any, list[str]]]:
    """Group a document's nodes into ``(image, [texts])`` chunks.

    ``attend_next=False``: an image owns the text that follows it (up to the next image).
    ``attend_next=True``: an image owns the text that precedes it (since the previous image), so
    with ``<image>`` placed first in its chunk that text sees the image that came *after* it in the
    page (Flamingo's image-index augmentation). Text owned by no image is left out. Images with
    no bytes are left out.
    """
    nodes = [(t, im) for t, im in zip(texts, images) if t is not None or im is not None]
    chunks: list[tuple[Any, list[str]]] = []
    pending: list[str] = []
    current: tuple[Any, list[str]] | None = None
    for text, img in nodes:
        if img is None:
            if text and text.strip():
                (pending if attend_next or current is None else current[1]).append(text)
            continue
        if attend_next:
            chunks.append((img, pending))
            pending = []
        else:
            current = (img, [])
            chunks.append(current)
    return chunks


def build_interleaved(
    raw: dict[str, Any], tok: TextTokenizer, cfg: DataConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """One interleaved sample: ``<image> text <|endofchunk|>`` chunks from a random start, ≤ max_images."""
    attend_next = rng.random() < cfg.p_next
    space = rng.random() < cfg.p_leading_space
    chunks = [c for c in chunk_document(raw["texts"], raw["images"], attend_next) if c[0] is not None]
    if not chunks:
        raise Drop("no_images")
    start = int(rng.integers(0, len(chunks)))
    ids: list[int] = []
    pixels: list[np.ndarray] = []
    for img_bytes, chunk_texts in chunks[start:]:
        if len(pixels) == cfg.max_images or len(ids) >= cfg.max_tokens:
            break
        try:
            px = load_image(img_bytes, cfg.image_size, rng, cfg)
        except Drop:
            continue  # an undecodable image loses its chunk; counted through the image counter
        text = " ".join(_text_for(t, False) for t in chunk_texts)
        body = tok.encode((" " + text) if space else text) if text else []
        ids += [tok.image_id] + body + [tok.eoc_id]
        pixels.append(px)
    if not pixels:
        raise Drop("undecodable_image")
    # Only images whose <image> token survives truncation are kept, so images and markers align.
    kept = sum(1 for t in ids[: cfg.max_tokens] if t == tok.image_id)
    S = cfg.image_size
    images = np.zeros((cfg.max_images, 1, S, S, 3), np.uint8)
    for i, px in enumerate(pixels[:kept]):
        images[i, 0] = px
    return finish_sample(ids, images, tok, cfg)


def build_pair(raw: dict[str, Any], tok: TextTokenizer, cfg: DataConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``<image> caption <|endofchunk|>`` with one image (M = 1, T = 1)."""
    space = rng.random() < cfg.p_leading_space
    px = load_image(raw["images"][0], cfg.image_size, rng, cfg)
    ids = [tok.image_id] + tok.encode(_text_for(raw["texts"][0], space)) + [tok.eoc_id]
    return finish_sample(ids, px[None, None], tok, cfg)


def build_video(raw: dict[str, Any], tok: TextTokenizer, cfg: DataConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``<image> caption <|endofchunk|>`` with one clip of ``frames`` frames (M = 1, T = frames).

    A random window of ``frames`` consecutive frames is taken (frames repeat when the clip is
    shorter); crop and flip are the same for every frame of a clip.
    """
    space = rng.random() < cfg.p_leading_space
    frames = raw["frames"]
    n = len(frames)
    if n == 0:
        raise Drop("no_frames")
    T = cfg.frames
    start = int(rng.integers(0, max(1, n - T + 1)))
    idx = [min(start + i, n - 1) for i in range(T)]
    clip_seed = int(rng.integers(0, 2**31))
    out = np.stack([load_image(frames[i], cfg.image_size, np.random.default_rng(clip_seed), cfg) for i in idx])
    ids = [tok.image_id] + tok.encode(_text_for(raw["texts"][0], space)) + [tok.eoc_id]
    return finish_sample(ids, out[None], tok, cfg)


BUILDERS: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    "interleaved": build_interleaved,
    "pairs": build_pair,
    "videos": build_video,
}


# ---------------------------------------------------------------------------------------------
# The deterministic stream


def raw_stream(
    files: list[str], kind: str, seed: int, host: int = 0, num_hosts: int = 1, stats: collections.Counter | None = None,
    image_cache: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Endless raw elements for one host: per-epoch seeded shard order, shards split across hosts.

    With fewer shards than hosts every host reads all shards and keeps every ``num_hosts``-th
    element, so hosts never see the same element in an epoch.
    """
    if not files:
        raise ValueError(f"no {kind} shards to read")
    epoch = 0
    while True:
        order = [files[i] for i in np.random.default_rng([seed, epoch]).permutation(len(files))]
        stride = len(order) < num_hosts
        mine = order if stride else order[host::num_hosts]
        k = 0
        for path in mine:
            for rec in read_shard(path, kind, stats, image_cache):
                if not stride or k % num_hosts == host:
                    yield rec
                k += 1
        epoch += 1


def shuffle(it: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Seeded shuffle buffer: fill ``size`` elements, then emit a random one per new element."""
    if size <= 1:
        yield from it
        return
    buf: list[Any] = []
    for x in it:
        if len(buf) < size:
            buf.append(x)
            continue
        i = int(rng.integers(0, size))
        buf[i], x = x, buf[i]
        yield x
    while buf:
        yield buf.pop(int(rng.integers(0, len(buf))))


def _ordered_map(fn: Callable[[Any], Any], it: Iterator[Any], workers: int) -> Iterator[Any]:
    """``map(fn, it)`` on ``workers`` threads, results in input order (so worker count is invisible)."""
    if workers <= 1:
        for x in it:
            yield fn(x)
        return
    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(workers) as ex:
        for x in it:
            pending.append(ex.submit(fn, x))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class Loader:
    """Batches of one dataset on one host; iterate it, read ``state()`` after each batch to resume.

    ``batch_size`` is this host's share of the global batch. ``stats`` counts read elements,
    samples and every drop by reason (``dropped_<reason>``).
    """

    def __init__(
        self,
        files: list[str],
        kind: str,
        tok: TextTokenizer,
        batch_size: int,
        cfg: DataConfig = DataConfig(),
        host: int = 0,
        num_hosts: int = 1,
        start: int = 0,
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown data kind {kind!r} (expected one of {KINDS})")
        self.files, self.kind, self.tok, self.batch_size, self.cfg = files, kind, tok, batch_size, cfg
        self.host, self.num_hosts = host, num_hosts
        self.position = start  # raw elements consumed by the batches handed out so far
        self.stats: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def state(self) -> dict[str, int]:
        return {"position": self.position}

    def _raw(self, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
        rng = np.random.default_rng([self.cfg.seed, self.host, 7])
        raw = raw_stream(self.files, self.kind, self.cfg.seed, self.host, self.num_hosts, self.stats, self.cfg.image_cache)
        stream = shuffle(raw, self.cfg.shuffle_buffer, rng)
        for j, rec in enumerate(stream):
            if j >= start:
                yield j, rec

    def _build(self, item: tuple[int, dict[str, Any]]) -> tuple[int, dict[str, np.ndarray] | None]:
        j, raw = item
        rng = np.random.default_rng([self.cfg.seed, self.host, j])
        try:
            return j, BUILDERS[self.kind](raw, self.tok, self.cfg, rng)
        except Drop as d:
            with self._lock:
                self.stats[f"dropped_{d.reason}"] += 1
            return j, None

    def batches(self) -> Iterator[tuple[dict[str, np.ndarray], dict[str, int]]]:
        """Endless ``(batch, state_after_batch)`` pairs from the current position."""
        buf: list[dict[str, np.ndarray]] = []
        for j, sample in _ordered_map(self._build, self._raw(self.position), self.cfg.workers):
            self.stats["read"] += 1
            if sample is None:
                continue  # dropped and counted in _build
            self.stats["samples"] += 1
            buf.append(sample)
            if len(buf) == self.batch_size:
                batch = {k: np.stack([s[k] for s in buf]) for k in buf[0]}
                buf = []
                yield batch, {"position": j + 1}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for batch, st in self.batches():
            self.position = st["position"]
            yield batch


def prefetch(it: Iterator[Any], size: int) -> Iterator[Any]:
    """Run ``it`` on a background thread, ``size`` items ahead (overlaps loading with the step)."""
    if size <= 0:
        yield from it
        return
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def put(x: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                pass  # consumer busy (or gone): check stop and retry
        return False

    def work() -> None:
        try:
            for x in it:
                if not put(x):
                    break
            else:
                put(done)
        except BaseException as e:  # re-raised in the consumer so errors keep their traceback
            put(e)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # ends the loader's generator and its decode threads

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            x = q.get()
            if x is done:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()


def iter_texts(files: list[str], kind: str = "interleaved", limit: int | None = None) -> Iterator[str]:
    """Every text of the shards in file order (for tokenizer training)."""
    n = 0
    for path in files:
        for rec in read_shard(path, kind):
            for t in rec["texts"]:
                if t:
                    yield _clean(t)
                    n += 1
                    if limit is not None and n >= limit:
                        return


def data_config_dict(cfg: DataConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
