"""Sharded output: webdataset, MMC4 and Parquet shards, a manifest, and sorted JSON-lines side outputs.

Sample formats (docs/FORMATS.md says which client reads which):

* ``wds``: webdataset, ``<doc_id>.json`` + ``<doc_id>.images.mp`` per document (``schemas.samples``);
* ``mmc4``: webdataset, one MMC4 ``<doc_id>.json`` per document, images inside (``schemas.samples``);
* ``parquet``: OBELICS's columns plus m3w's (``schemas.arrow``).

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
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.layout import FORMAT_DIRS, MANIFEST
from schemas.arrow import ARROW_SCHEMA, to_row
from schemas.document import Document, ImageNode
from schemas.samples import write_mmc4, write_wds

PARQUET_ROW_GROUP = 64  # documents per row group: bounded writer memory, still good scan speed


def stable_hash(key: str) -> int:
    """A hash that is the same in every process and run (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def shard_name(index: int, total: int, ext: str) -> str:
    return f"shard-{index:05d}-of-{total:05d}.{ext}"


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


def write_parquet(fileobj: Any, docs: Iterable[Document], originals: bool = False) -> None:
    """Row groups of ``PARQUET_ROW_GROUP`` documents (``schemas.arrow``); ``originals`` is in the rows."""
    with pq.ParquetWriter(fileobj, ARROW_SCHEMA, compression="zstd") as writer:
        batch: list[dict[str, Any]] = []
        for doc in docs:
            batch.append(to_row(doc))
            if len(batch) == PARQUET_ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(batch, schema=ARROW_SCHEMA))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=ARROW_SCHEMA))


# format -> (file extension, writer(fileobj, sorted documents, originals kept))
_WRITERS = {"wds": ("tar", write_wds), "mmc4": ("tar", write_mmc4), "parquet": ("parquet", write_parquet)}


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
        originals = False
        try:
            for doc in docs:
                spill.add(doc.doc_id, doc)
                n_images += sum(1 for n in doc.nodes if isinstance(n, ImageNode) and n.data is not None)
                originals = originals or any(isinstance(n, ImageNode) and n.original_data is not None for n in doc.nodes)
            for fmt in self.formats:
                ext, fn = _WRITERS[fmt]
                name = f"{FORMAT_DIRS[fmt]}/{shard_name(index, num_shards, ext)}"
                sha, size = atomic_write(FileSystems.join(self.output_dir, name), lambda f: fn(f, spill.sorted(), originals))
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


BUCKET_BITS = 10
LINE_BUCKETS = 1 << BUCKET_BITS  # hash ranges a spilled run is indexed by; the most files one output can have


def _line_key(line: str) -> tuple[int, str]:
    """Order of lines in their files: by stable hash, then by text. A file holds one contiguous
    range of hashes, so each spilled run holds its part of every file as one sorted stretch."""
    return stable_hash(line), line


def _bucket(h: int) -> int:
    return h >> (64 - BUCKET_BITS)


def lines_num_files(total: int, rows_per_file: int) -> int:
    """Files for ``total`` lines: the power of two (≤ ``LINE_BUCKETS``) that keeps them near ``rows_per_file``."""
    want = max(1, math.ceil(total / rows_per_file))
    n = 1
    while n < want and n < LINE_BUCKETS:
        n *= 2
    return n


class _SpillLinesFn(beam.DoFn):
    """Batches of lines → sorted runs in temporary files next to the output; yields one
    (run path, lines, [(bucket, offset, length), ...]) per run. Lines wait in memory only up to
    ``budget`` bytes per bundle: the run's data never travels through a shuffle."""

    def __init__(self, output_dir: str, prefix: str, budget: int) -> None:
        self.output_dir, self.prefix, self.budget = output_dir, prefix, budget

    def start_bundle(self) -> None:
        self._lines: list[tuple[int, str]] = []
        self._bytes = 0

    def process(self, batch: list[str]) -> Iterator[Any]:
        for line in batch:
            self._lines.append(_line_key(line))
            self._bytes += len(line) + 80
        if self._bytes >= self.budget:
            yield self._flush()

    def finish_bundle(self) -> Iterator[Any]:
        from apache_beam.transforms.window import GlobalWindows

        if self._lines:
            yield GlobalWindows.windowed_value(self._flush())

    def _flush(self) -> tuple[str, int, list[tuple[int, int, int]]]:
        self._lines.sort()
        path = FileSystems.join(self.output_dir, f"{self.prefix}-run.tmp-{uuid.uuid4().hex}")
        index: list[tuple[int, int, int]] = []
        at = 0
        with FileSystems.create(path, mime_type="application/octet-stream", compression_type="uncompressed") as f:
            bucket, start, parts = -1, 0, []
            for h, line in self._lines:
                b = _bucket(h)
                if b != bucket:
                    if bucket >= 0:
                        index.append((bucket, start, at - start))
                    bucket, start = b, at
                data = line.encode("utf-8", "surrogatepass") + b"\n"
                parts.append(data)
                at += len(data)
                if len(parts) >= 4096:
                    f.write(b"".join(parts))
                    parts = []
            f.write(b"".join(parts))
            if bucket >= 0:
                index.append((bucket, start, at - start))
        n = len(self._lines)
        self._lines, self._bytes = [], 0
        return path, n, index


def _run_lines(path: str, offset: int, length: int) -> Iterator[tuple[tuple[int, str], bytes]]:
    """The lines of one stretch of a run, as (sort key, bytes), read 1 MB at a time."""
    from apache_beam.io.filesystem import CompressionTypes

    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.seek(offset)
        left, rest = length, b""
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for raw in lines:
                yield _line_key(raw.decode("utf-8", "surrogatepass")), raw


class WriteSortedJsonLines(beam.PTransform):
    """PCollection[list[str]] (batches of JSON lines) → ``<prefix>-NNNNN-of-MMMMM.jsonl`` files.

    Used for rejects and the decontamination report: deterministic names and contents. ``M`` is
    the power of two that keeps files near ``rows_per_file`` lines; file ``i`` holds the lines
    whose ``stable_hash`` lies in the ``i``-th of ``M`` equal ranges, ordered by (hash, line).
    No shuffle carries the lines: each bundle spills them to sorted runs (temporary files next to
    the output, ``<prefix>-run.tmp-<hex>``, bounded memory); only the runs' names and indexes are
    shuffled, and each file's writer merges its stretch of every run, then the runs are deleted.
    So memory is flat in the number of lines on every runner, the local one included.
    """

    def __init__(
        self, output_dir: str, prefix: str, rows_per_file: int = 100_000, spill_bytes: int = 32 << 20, to_lines: Any = None
    ) -> None:
        super().__init__()
        self.output_dir, self.prefix, self.rows_per_file, self.spill_bytes = output_dir, prefix, rows_per_file, spill_bytes
        self.to_lines = to_lines

    def expand(self, batches: Any) -> beam.PCollection:
        """``batches``: one PCollection, or several (a tuple or list), each spilled where it is
        made: only the small run descriptors are flattened, so no runner buffers the lines
        between the stages that make them and this one (a Flatten of many stages' outputs
        would). ``to_lines`` (element → iterable of line batches) is applied to each first."""
        per_file = self.rows_per_file
        folder, _, stem = f"{self.output_dir.rstrip('/')}/{self.prefix}".rpartition("/")
        inputs = list(batches) if isinstance(batches, (tuple, list)) else [batches]
        parts = []
        for i, pcoll in enumerate(inputs):
            if self.to_lines is not None:
                pcoll = pcoll | f"ToLines{i}" >> beam.FlatMap(self.to_lines)
            parts.append(pcoll | f"SpillSortedRuns{i}" >> beam.ParDo(_SpillLinesFn(folder, stem, self.spill_bytes)))
        runs = parts[0] if len(parts) == 1 else tuple(parts) | "AllRuns" >> beam.Flatten()
        total = runs | "CountLines" >> beam.Map(lambda r: r[1]) | "Total" >> beam.CombineGlobally(sum)
        n_files = total | "NumFiles" >> beam.Map(lambda n: lines_num_files(n, per_file) if n else 0)
        runs_side = beam.pvalue.AsList(runs | "RunIndexes" >> beam.Map(lambda r: (r[0], r[2])))
        out, prefix = self.output_dir, self.prefix

        def write(index: int, total_files: int, all_runs: list) -> str:
            import heapq

            per = LINE_BUCKETS // total_files
            streams = []
            for path, spans in sorted(all_runs):
                # a run is sorted by hash: this file's buckets are one stretch of it
                mine = [(offset, offset + length) for bucket, offset, length in spans if bucket // per == index]
                if mine:
                    streams.append(_run_lines(path, mine[0][0], mine[-1][1] - mine[0][0]))
            name = FileSystems.join(out, f"{prefix}-{index:05d}-of-{total_files:05d}.jsonl")

            def fn(f: Any) -> None:
                buf = []
                for _, raw in heapq.merge(*streams):
                    buf.append(raw + b"\n")
                    if len(buf) >= 4096:
                        f.write(b"".join(buf))
                        buf = []
                f.write(b"".join(buf))

            atomic_write(name, fn)
            return name

        def delete_runs(_: Any, all_runs: list) -> None:
            paths = [path for path, _ in all_runs]
            if paths:
                FileSystems.delete(paths)

        written = (
            n_files
            | "FileIndexes" >> beam.FlatMap(lambda n: range(n))
            | "SpreadFiles" >> beam.Reshuffle()
            | "WriteFile" >> beam.Map(write, total_files=beam.pvalue.AsSingleton(n_files), all_runs=runs_side)
        )
        _ = (
            written
            | "AllWritten" >> beam.combiners.Count.Globally()
            | "DeleteRuns" >> beam.Map(delete_runs, all_runs=runs_side)
        )
        return written


def read_manifest(output_dir: str) -> dict[str, Any]:
    with open(os.path.join(output_dir, MANIFEST), encoding="utf-8") as f:
        return json.load(f)
