"""Evaluation-set index: perceptual hashes in FAISS binary indexes, optional dense embeddings.

    build-m3w eval-index --images DIR_OR_MANIFEST --name NAME --output INDEX [--append]
        [--feature phash256 --feature phash64] [--variants crops --variants trim] [--embedder thumbnail16 | MODULE:FACTORY
        --embedder-weights PATH]

One index file holds several evaluation sets; each entry keeps its image id and set name. The
file is an ``.npz`` (no pickle): image ids and set names, and per feature a serialised FAISS index
plus the entry → image map (an image is indexed once per variant). Binary features use
``IndexBinaryFlat`` (exact) below ``MULTIHASH_MIN_ENTRIES``; larger 64-bit sets use
``IndexBinaryMultiHash`` (exact within the decontamination radius), wider codes ``IndexBinaryHNSW``. Dense embeddings are L2-normalised and searched by
inner product (cosine) in ``IndexFlatIP``.

Manifests: a text file with one image path per line, or ``id<TAB>path``; a JSON Lines file of
``{"id": ..., "path": ...}``; a COCO-style JSON with ``images: [{id, file_name}]``. Relative
paths are taken from the manifest's folder.
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import os
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import faiss
import numpy as np
from PIL import Image

from dedup import phash

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MULTIHASH_MIN_ENTRIES = 200_000  # 64-bit codes: flat search below this many entries (docs/bench/dedup.md)
MULTIHASH_TABLES = 3  # 3 tables of 21 bits: exact within distance 8 with 2 flips per table
HNSW_MIN_ENTRIES = 2_000_000  # wider codes: flat search below this many entries
DEFAULT_FEATURES = ["phash256", "phash64"]  # phash256 is the calibrated one; phash64 matches ImageNode.phash
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class EvalIndexError(ValueError):
    """A user mistake building or loading an index; the message says what to fix."""


# ---------------------------------------------------------------------------------------------
# Dense embedders


class Embedder(Protocol):
    """Maps RGB images to L2-normalised float32 vectors: list[Image] → float32[n, dim]."""

    name: str
    dim: int

    def embed(self, images: list[Image.Image]) -> np.ndarray: ...


class ThumbnailEmbedder:
    """Built-in dense feature: a 16x16 colour thumbnail, mean-centred per channel, L2-normalised
    (dim 768). A baseline that needs no weights; pass a learned encoder for semantic matching."""

    name = "thumbnail16"
    dim = 16 * 16 * 3

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for i, img in enumerate(images):
            x = np.asarray(img.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32)
            x = x - x.mean(axis=(0, 1), keepdims=True)
            v = x.ravel()
            out[i] = v / max(float(np.linalg.norm(v)), 1e-6)
        return out


def load_embedder(spec: str | None, weights: str | None = None) -> Embedder | None:
    """``None`` → no dense feature; ``"thumbnail16"`` → the built-in; ``"pkg.module:factory"`` →
    ``factory(weights)`` (weights: a local path, never downloaded)."""
    if not spec:
        return None
    if spec == ThumbnailEmbedder.name:
        return ThumbnailEmbedder()
    if ":" not in spec:
        raise EvalIndexError(f"--embedder {spec!r}: expected 'thumbnail16' or 'package.module:factory'")
    mod_name, fn_name = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise EvalIndexError(f"--embedder {spec!r}: cannot import it ({e})") from None
    if weights is not None and not os.path.exists(weights):
        raise EvalIndexError(f"--embedder-weights {weights}: no such file; pass a local weights path")
    return factory(weights)


# ---------------------------------------------------------------------------------------------
# The index


@dataclass
class _Feature:
    index: Any  # faiss.IndexBinary or faiss.Index
    entries: np.ndarray  # int64[n_entries]: row in ids/sets
    variants: list[str] = field(default_factory=list)


def _new_binary_index(bits: int, n: int) -> Any:
    """Exact flat search for small sets; multi-index hashing (exact within a radius, see
    ``_set_radius``) for large 64-bit sets; HNSW (approximate) for large wider codes."""
    if n >= MULTIHASH_MIN_ENTRIES and bits == 64:
        return faiss.IndexBinaryMultiHash(bits, MULTIHASH_TABLES, bits // MULTIHASH_TABLES)
    if n >= HNSW_MIN_ENTRIES:
        return faiss.IndexBinaryHNSW(bits, 16)
    return faiss.IndexBinaryFlat(bits)


def _set_radius(index: Any, radius: int) -> None:
    """Multi-index hashing finds every code within ``radius``: with t tables of b bits, a code at
    distance <= t * (nflip + 1) - 1 differs in at most nflip bits in some table (pigeonhole)."""
    if isinstance(index, faiss.IndexBinaryMultiHash):
        index.nflip = max(0, (radius + 1 + MULTIHASH_TABLES - 1) // MULTIHASH_TABLES - 1)


@dataclass
class EvalIndex:
    """Evaluation images: ids[i], sets[i]; per feature a FAISS index whose entry j is image entries[j]."""

    ids: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    binary: dict[str, _Feature] = field(default_factory=dict)
    dense: dict[str, _Feature] = field(default_factory=dict)

    # -- building ------------------------------------------------------------------------------
    def add_codes(self, feature: str, codes: np.ndarray, images: np.ndarray, variants: list[str] | None = None) -> None:
        """Add binary codes (uint8[n, bits // 8]) of ``feature``; ``images[j]`` is the image row of code j."""
        bits = phash.feature_bits(feature)
        codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, bits // 8)
        old = self.binary.get(feature)
        if old is None:
            entries = np.asarray(images, dtype=np.int64)
            all_codes = codes
            var = list(variants or [])
        else:
            if sorted(old.variants) != sorted(variants or []):
                raise EvalIndexError(
                    f"index {feature} was built with variants {old.variants}; append with the same --variants"
                )
            entries = np.concatenate([old.entries, np.asarray(images, dtype=np.int64)])
            all_codes = np.concatenate([_binary_codes(old.index), codes])
            var = old.variants
        index = _new_binary_index(bits, len(all_codes))
        index.add(all_codes)
        self.binary[feature] = _Feature(index, entries, var)

    def add_vectors(self, name: str, vectors: np.ndarray, images: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        old = self.dense.get(name)
        if old is None:
            old = _Feature(faiss.IndexFlatIP(vectors.shape[1]), np.zeros(0, dtype=np.int64))
        old.index.add(vectors)
        old.entries = np.concatenate([old.entries, np.asarray(images, dtype=np.int64)])
        self.dense[name] = old

    def add_images(
        self,
        images: Iterator[tuple[str, Image.Image]],
        set_name: str,
        features: list[str],
        variants: list[str] | None = None,
        embedder: Embedder | None = None,
    ) -> int:
        """Add (id, RGB image) pairs under ``set_name``; returns how many were added."""
        variants = list(variants or [])
        codes: dict[str, list[np.ndarray]] = {f: [] for f in features}
        rows: list[int] = []
        dense_imgs: list[Image.Image] = []
        dense_rows: list[int] = []
        vectors: list[np.ndarray] = []
        n = 0
        for image_id, img in images:
            row = len(self.ids)
            self.ids.append(image_id)
            self.sets.append(set_name)
            views = phash.variant_images(img, variants)
            for f in features:
                codes[f].extend(phash.compute(f, v) for v in views)
            rows.extend([row] * len(views))
            if embedder is not None:
                dense_imgs.append(img)
                dense_rows.append(row)
                if len(dense_imgs) >= 64:
                    vectors.append(embedder.embed(dense_imgs))
                    dense_imgs = []
            n += 1
        if n == 0:
            return 0
        for f in features:
            self.add_codes(f, np.stack(codes[f]), np.asarray(rows), variants)
        if embedder is not None:
            if dense_imgs:
                vectors.append(embedder.embed(dense_imgs))
            self.add_vectors(embedder.name, np.concatenate(vectors), np.asarray(dense_rows))
        return n

    # -- searching -----------------------------------------------------------------------------
    def search(
        self, phashes: Any, feature: str = "phash64", radius: int | None = None
    ) -> tuple[np.ndarray, list[str], list[str]]:
        """Nearest evaluation image of each query: (Hamming distances int32[n], set names, ids).

        ``phashes``: hex strings (``str(imagehash.phash(img))``, 64-bit, or the 256-bit hex of
        ``imagehash.phash(img, 16)``) or packed codes uint8[n, bits // 8] of ``feature``.
        Exact for flat indexes; a multi-hash index is exact within ``radius`` (default 8) and a
        query with nothing that close may report ``bits + 1`` (no neighbour), as does an empty index.
        """
        feat = self._feature(feature)
        _set_radius(feat.index, 8 if radius is None else radius)
        bits = phash.feature_bits(feature)
        if isinstance(phashes, np.ndarray):
            q = np.ascontiguousarray(phashes, dtype=np.uint8).reshape(-1, bits // 8)
        else:
            q = np.stack([phash.hex_to_code(h) for h in phashes]) if len(phashes) else np.zeros((0, bits // 8), np.uint8)
        if len(q) == 0:
            return np.zeros(0, dtype=np.int32), [], []
        if feat.index.ntotal == 0:
            return np.full(len(q), bits + 1, dtype=np.int32), [""] * len(q), [""] * len(q)
        dist, idx = feat.index.search(q, 1)
        found = idx[:, 0] >= 0
        dist = np.where(found, dist[:, 0], bits + 1).astype(np.int32)
        rows = [int(feat.entries[i]) if ok else -1 for i, ok in zip(idx[:, 0], found)]
        return dist, [self.sets[r] if r >= 0 else "" for r in rows], [self.ids[r] if r >= 0 else "" for r in rows]

    def search_dense(self, vectors: np.ndarray, name: str) -> tuple[np.ndarray, list[str], list[str]]:
        """Most similar evaluation image by cosine: (similarities float32[n], set names, ids)."""
        if name not in self.dense:
            raise EvalIndexError(f"the index has no dense feature {name!r}; it has {sorted(self.dense) or 'none'}")
        feat = self.dense[name]
        sim, idx = feat.index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
        rows = feat.entries[idx[:, 0]]
        return sim[:, 0], [self.sets[r] for r in rows], [self.ids[r] for r in rows]

    def _feature(self, feature: str) -> _Feature:
        if feature not in self.binary:
            raise EvalIndexError(
                f"the evaluation index has no {feature!r} codes (it has {sorted(self.binary) or 'none'}); "
                f"rebuild it with --feature {feature}"
            )
        return self.binary[feature]

    def set_sizes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sets:
            out[s] = out.get(s, 0) + 1
        return out

    # -- files ---------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {
            "ids": np.asarray(self.ids, dtype=str),
            "sets": np.asarray(self.sets, dtype=str),
        }
        meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "binary": {}, "dense": {}}
        for name, f in self.binary.items():
            arrays[f"binary.{name}.index"] = faiss.serialize_index_binary(f.index)
            arrays[f"binary.{name}.entries"] = f.entries
            meta["binary"][name] = {"variants": f.variants}
        for name, f in self.dense.items():
            arrays[f"dense.{name}.index"] = faiss.serialize_index(f.index)
            arrays[f"dense.{name}.entries"] = f.entries
            meta["dense"][name] = {}
        arrays["meta"] = np.asarray(json.dumps(meta))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "EvalIndex":
        """The index ``to_bytes`` wrote; ``EvalIndexError`` for any other bytes."""
        try:
            return cls._from_npz(data)
        except EvalIndexError:
            raise
        # What numpy, zipfile, json and FAISS raise on bytes that are not such an index.
        except (ValueError, OSError, KeyError, TypeError, AttributeError, RuntimeError, EOFError, zipfile.BadZipFile) as e:
            why = " ".join(str(e).split())[:80]
            raise EvalIndexError(f"not an m3w evaluation index ({type(e).__name__}: {why}); build it with `build-m3w eval-index`") from None

    @classmethod
    def _from_npz(cls, data: bytes) -> "EvalIndex":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format_version") != FORMAT_VERSION:
                raise EvalIndexError(f"evaluation index format {meta.get('format_version')} is not supported; rebuild it")
            out = cls([str(x) for x in z["ids"]], [str(x) for x in z["sets"]])
            for name, m in meta["binary"].items():
                index = faiss.deserialize_index_binary(z[f"binary.{name}.index"])
                out.binary[name] = _Feature(index, z[f"binary.{name}.entries"], list(m.get("variants", [])))
            for name in meta["dense"]:
                index = faiss.deserialize_index(z[f"dense.{name}.index"])
                out.dense[name] = _Feature(index, z[f"dense.{name}.entries"])
        return out

    def save(self, path: str) -> None:
        """Write atomically (temporary file + rename) so a reader never sees half an index."""
        data = self.to_bytes()
        if "://" in path:
            from apache_beam.io.filesystems import FileSystems  # only for URIs: local runs need no Beam

            with FileSystems.create(path) as f:
                f.write(data)
            return
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "EvalIndex":
        """Read an index from a local path or any Beam FileSystem URI (gs://, s3://, ...)."""
        try:
            if "://" in path:
                from apache_beam.io.filesystems import FileSystems  # only for URIs: local runs need no Beam

                with FileSystems.open(path) as f:
                    data = f.read()
            else:
                with open(path, "rb") as f:
                    data = f.read()
        except (OSError, IOError) as e:
            raise EvalIndexError(f"evaluation index {path} cannot be read ({e}); build it with `build-m3w eval-index`") from None
        try:
            return cls.from_bytes(data)
        except EvalIndexError as e:
            raise EvalIndexError(f"evaluation index {path}: {e}") from None


def _binary_codes(index: Any) -> np.ndarray:
    """All codes stored in a binary index (flat or HNSW), in insertion order."""
    storage = faiss.downcast_IndexBinary(index.storage) if hasattr(index, "storage") else index
    codes = faiss.vector_to_array(storage.xb)
    return codes.reshape(index.ntotal, index.code_size)


# ---------------------------------------------------------------------------------------------
# Reading evaluation images


def iter_image_paths(source: str) -> list[tuple[str, str]]:
    """(image id, path) for a folder (recursive; id = path relative to it) or a manifest."""
    if os.path.isdir(source):
        out = []
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(files):
                if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                    full = os.path.join(root, name)
                    out.append((os.path.relpath(full, source), full))
        return out
    if not os.path.isfile(source):
        raise EvalIndexError(f"--images {source}: no such folder or manifest file")
    base = os.path.dirname(os.path.abspath(source))
    with open(source, encoding="utf-8") as f:
        text = f.read()
    if source.endswith(".json"):
        try:
            coco = json.loads(text)
            return [(str(im["id"]), os.path.join(base, im["file_name"])) for im in coco["images"]]
        except (ValueError, KeyError, TypeError) as e:
            raise EvalIndexError(f"--images {source}: not a COCO-style JSON with images[].id/file_name ({e})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if source.endswith(".jsonl"):
            try:
                obj = json.loads(line)
                image_id, path = str(obj["id"]), obj["path"]
            except (ValueError, KeyError, TypeError):
                raise EvalIndexError(f"--images {source} line {n}: expected {{\"id\": ..., \"path\": ...}}") from None
        elif "\t" in line:
            image_id, path = line.split("\t", 1)
        else:
            image_id, path = line, line
        out.append((image_id, os.path.join(base, path)))
    return out


def _load_images(pairs: list[tuple[str, str]], stats: dict[str, int]) -> Iterator[tuple[str, Image.Image]]:
    for image_id, path in pairs:
        try:
            with open(path, "rb") as f:
                img = phash.decode_rgb(f.read())
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            stats["unreadable"] += 1
            log.warning("skipping unreadable evaluation image %s: %s", path, e)
            continue
        stats["added"] += 1
        yield image_id, img


def main(argv: list[str]) -> int:
    """``build-m3w eval-index``: add a set of evaluation images to an index file."""
    ap = argparse.ArgumentParser(prog="build-m3w eval-index", description=main.__doc__)
    ap.add_argument("--images", required=True, help="folder of images, or a manifest (.txt/.tsv/.jsonl/COCO .json)")
    ap.add_argument("--name", required=True, help="evaluation set name stored with each entry, e.g. coco-val2014")
    ap.add_argument("--output", required=True, help="index file to write (local path or FileSystem URI)")
    ap.add_argument("--append", action="store_true", help="add to an existing index instead of replacing it")
    ap.add_argument(
        "--feature",
        action="append",
        default=None,
        help=f"binary feature(s) to index, repeatable (default {' '.join(DEFAULT_FEATURES)}); "
        f"one of {', '.join(sorted(phash.FEATURES))}",
    )
    ap.add_argument(
        "--variants",
        action="append",
        default=None,
        help=f"index-side variants, repeatable: {', '.join(sorted(phash.VARIANTS))} "
        f"(default {' '.join(phash.DEFAULT_VARIANTS)}, as calibrated; 'none' for the images alone)",
    )
    ap.add_argument("--embedder", default=None, help="dense embedder: thumbnail16 or package.module:factory")
    ap.add_argument("--embedder-weights", default=None, help="local weights file passed to the embedder factory")
    args = ap.parse_args(argv)
    features = args.feature or DEFAULT_FEATURES
    variants = [v for v in (args.variants or phash.DEFAULT_VARIANTS) if v != "none"]
    try:
        for f in features:
            phash.feature_bits(f)
        pairs = iter_image_paths(args.images)
        if not pairs:
            raise EvalIndexError(f"--images {args.images}: no images found")
        embedder = load_embedder(args.embedder, args.embedder_weights)
        index = EvalIndex.load(args.output) if args.append and os.path.exists(args.output) else EvalIndex()
        if args.name in index.set_sizes():
            raise EvalIndexError(f"set {args.name!r} is already in {args.output}; pick another --name")
        stats = {"added": 0, "unreadable": 0}
        index.add_images(_load_images(pairs, stats), args.name, features, variants, embedder)
        if stats["added"] == 0:
            raise EvalIndexError(f"--images {args.images}: none of the {len(pairs)} images could be decoded")
        index.save(args.output)
    except (EvalIndexError, ValueError) as e:
        print(f"build-m3w eval-index: {e}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{k}: {v}" for k, v in index.set_sizes().items())
    print(f"{args.output}: added {stats['added']} images of {args.name} ({stats['unreadable']} unreadable); sets {sizes}")
    return 0
