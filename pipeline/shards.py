"""Sharded output: webdataset tar and Parquet shards, a manifest, and sorted JSON-lines side outputs.

Shard contents are a pure function of the documents: a document goes to shard
``stable_hash(doc_id) % num_shards`` (``num_shards`` from the total count and the target shard
size), documents are sorted by id inside a shard, and archive metadata is fixed. So reruns,
retried bundles and different worker counts write byte-identical files. Every file is written
under a temporary name and renamed into place: a final name never holds a partial file.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from schemas.arrow import ARROW_SCHEMA, to_row
from schemas.document import Document, ImageNode, dumps

WDS_DIR = "wds"
PARQUET_DIR = "parquet"
MANIFEST = "manifest.json"
PARQUET_ROW_GROUP = 64  # documents per row group: bounded writer memory, still good scan speed
_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif", "bmp": "bmp", "tiff": "tiff"}


def stable_hash(key: str) -> int:
    """A hash that is the same in every process and run (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def shard_name(index: int, total: int, ext: str) -> str:
    return f"shard-{index:05d}-of-{total:05d}.{ext}"


def image_member_name(doc_id: str, position: int, node: ImageNode) -> str:
    return f"{doc_id}.{position:04d}.{_EXT.get(node.format or '', 'bin')}"


def original_member_name(doc_id: str, position: int, node: ImageNode) -> str:
    """The crawled bytes (``images.keep_originals``): ``<doc_id>.original.<pos>.<ext>``, a suffix
    that readers looking for ``<pos>.<ext>`` members never take for the stored image."""
    return f"{doc_id}.original.{position:04d}.{_EXT.get(node.original_format or '', 'bin')}"


class _HashingWriter(io.RawIOBase):
    """Counts and hashes bytes on their way to the underlying file."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        b = bytes(b)
        self.sha.update(b)
        self.size += len(b)
        self.raw.write(b)
        return len(b)


def atomic_write(path: str, write_fn: Any) -> tuple[str, int]:
    """Write ``path`` through ``write_fn(fileobj)`` under a temporary name, then rename.

    Returns (sha256 hex, bytes). Works on every Beam FileSystem (local, gs://, s3://).
    """
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with FileSystems.create(tmp, mime_type="application/octet-stream", compression_type="uncompressed") as raw:
            w = _HashingWriter(raw)
            write_fn(w)
        if FileSystems.exists(path):  # a retried bundle: same content by construction, replace it
            FileSystems.delete([path])
        FileSystems.rename([tmp], [path])
    except BaseException:
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])
        raise
    return w.sha.hexdigest(), w.size


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed metadata: byte-identical archives across runs
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_wds(fileobj: Any, docs: Iterable[Document]) -> None:
    """One webdataset sample per document: ``<doc_id>.json`` then ``<doc_id>.<pos>.<ext>`` per image
    (and ``<doc_id>.original.<pos>.<ext>`` where the crawled bytes are kept)."""
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for doc in docs:
            _tar_add(tar, f"{doc.doc_id}.json", dumps(doc))
            for pos, node in enumerate(doc.nodes):
                if isinstance(node, ImageNode) and node.data is not None:
                    _tar_add(tar, image_member_name(doc.doc_id, pos, node), node.data)
                if isinstance(node, ImageNode) and node.original_data is not None:
                    _tar_add(tar, original_member_name(doc.doc_id, pos, node), node.original_data)


def write_parquet(fileobj: Any, docs: Iterable[Document]) -> None:
    with pq.ParquetWriter(fileobj, ARROW_SCHEMA, compression="zstd") as writer:
        batch: list[dict[str, Any]] = []
        for doc in docs:
            batch.append(to_row(doc))
            if len(batch) == PARQUET_ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(batch, schema=ARROW_SCHEMA))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=ARROW_SCHEMA))


class _SortedSpill:
    """Streams elements to a local temp file and replays them sorted by key.

    Only (key, offset, length) stays in memory, so a shard is never held whole.
    """

    def __init__(self) -> None:
        self._f = tempfile.TemporaryFile(prefix="m3w-shard-")
        self._index: list[tuple[str, int, int]] = []

    def add(self, key: str, value: Any) -> None:
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        self._index.append((key, self._f.tell(), len(blob)))
        self._f.write(blob)

    def __len__(self) -> int:
        return len(self._index)

    def sorted(self) -> Iterator[Any]:
        for _, offset, length in sorted(self._index):
            self._f.seek(offset)
            yield pickle.loads(self._f.read(length))

    def close(self) -> None:
        self._f.close()


class _WriteShardFn(beam.DoFn):
    """(shard index, docs) → writes that shard in every format; yields one manifest entry per file."""

    def __init__(self, output_dir: str, formats: list[str]) -> None:
        self.output_dir, self.formats = output_dir, formats
        self.shards = Metrics.counter("m3w", "output.shards")
        self.docs = Metrics.counter("m3w", "output.documents")
        self.images = Metrics.counter("m3w", "output.images")

    def process(self, element: tuple[int, Iterable[Document]], num_shards: int) -> Iterator[dict[str, Any]]:
        index, docs = element
        spill = _SortedSpill()
        n_images = 0
        try:
            for doc in docs:
                spill.add(doc.doc_id, doc)
                n_images += sum(1 for n in doc.nodes if isinstance(n, ImageNode) and n.data is not None)
            writers = {"wds": (WDS_DIR, "tar", write_wds), "parquet": (PARQUET_DIR, "parquet", write_parquet)}
            for fmt in self.formats:
                folder, ext, fn = writers[fmt]
                name = f"{folder}/{shard_name(index, num_shards, ext)}"
                sha, size = atomic_write(FileSystems.join(self.output_dir, name), lambda f: fn(f, spill.sorted()))
                yield {"format": fmt, "path": name, "documents": len(spill), "images": n_images, "bytes": size, "sha256": sha}
        finally:
            spill.close()
        print(f"build-m3w: wrote {shard_name(index, num_shards, '*')} ({len(spill):,} documents, {n_images:,} images)",
              file=sys.stderr, flush=True)
        self.shards.inc()
        self.docs.inc(len(spill))
        self.images.inc(n_images)


def _write_manifest(entries: list[dict[str, Any]], output_dir: str, num_shards: int) -> str:
    entries = sorted(entries, key=lambda e: e["path"])
    by_format: dict[str, dict[str, int]] = {}
    for e in entries:
        agg = by_format.setdefault(e["format"], {"shards": 0, "documents": 0, "images": 0, "bytes": 0})
        agg["shards"] += 1
        for k in ("documents", "images", "bytes"):
            agg[k] += e[k]
    manifest = {"num_shards": num_shards, "totals": by_format, "shards": entries}
    blob = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    path = FileSystems.join(output_dir, MANIFEST)
    atomic_write(path, lambda f: f.write(blob))
    return path


class WriteShards(beam.PTransform):
    """PCollection[Document] (images carry their bytes) → shard files + manifest.json.

    Yields the manifest path. ``shard_size`` is the target number of documents per shard.
    """

    def __init__(self, output_dir: str, formats: list[str], shard_size: int) -> None:
        super().__init__()
        self.output_dir, self.formats, self.shard_size = output_dir, formats, shard_size

    def expand(self, docs: beam.PCollection) -> beam.PCollection:
        size = self.shard_size
        num_shards = (
            docs
            | "CountDocuments" >> beam.combiners.Count.Globally()
            | "NumShards" >> beam.Map(lambda n: max(1, math.ceil(n / size)))
        )
        shards_side = beam.pvalue.AsSingleton(num_shards)
        entries = (
            docs
            | "AssignShard" >> beam.Map(lambda d, n: (stable_hash(d.doc_id) % n, d), n=shards_side)
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShardFn(self.output_dir, self.formats), num_shards=shards_side)
        )
        out = self.output_dir
        return (
            entries
            | "CollectEntries" >> beam.combiners.ToList()
            | "WriteManifest" >> beam.Map(_write_manifest, output_dir=out, num_shards=shards_side)
        )


class WriteSortedJsonLines(beam.PTransform):
    """PCollection[list[str]] (batches of JSON lines) → ``<prefix>-NNNNN-of-MMMMM.jsonl`` files,
    lines sorted, each line in file ``stable_hash(line) % files``.

    Used for rejects and the decontamination report: deterministic names and contents. Lines
    travel in batches (a stage's rejects of one bundle, say) so that the count, the file
    assignment and the shuffle handle one element per batch and file, not one per line.
    """

    def __init__(self, output_dir: str, prefix: str, rows_per_file: int = 100_000) -> None:
        super().__init__()
        self.output_dir, self.prefix, self.rows_per_file = output_dir, prefix, rows_per_file

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        per_file = self.rows_per_file
        n_files = (
            batches
            | "CountLines" >> beam.Map(len)
            | "Total" >> beam.CombineGlobally(sum)
            | "NumFiles" >> beam.Map(lambda n: max(1, math.ceil(n / per_file)))
        )
        side = beam.pvalue.AsSingleton(n_files)
        out, prefix = self.output_dir, self.prefix

        def assign(batch: list[str], n: int) -> Iterator[tuple[int, list[str]]]:
            per: dict[int, list[str]] = {}
            for line in batch:
                per.setdefault(stable_hash(line) % n, []).append(line)
            yield from per.items()

        def write(element: tuple[int, Iterable[list[str]]], total: int) -> str:
            index, groups = element
            spill = _SortedSpill()
            try:
                for group in groups:
                    for line in group:
                        spill.add(line, line)
                path = FileSystems.join(out, f"{prefix}-{index:05d}-of-{total:05d}.jsonl")

                def fn(f: Any) -> None:
                    for line in spill.sorted():
                        f.write(line.encode("utf-8", "surrogatepass") + b"\n")

                atomic_write(path, fn)
            finally:
                spill.close()
            return path

        return (
            batches
            | "AssignFile" >> beam.FlatMap(assign, n=side)
            | "GroupByFile" >> beam.GroupByKey()
            | "WriteFile" >> beam.Map(write, total=side)
        )


def read_manifest(output_dir: str) -> dict[str, Any]:
    with open(os.path.join(output_dir, MANIFEST), encoding="utf-8") as f:
        return json.load(f)
