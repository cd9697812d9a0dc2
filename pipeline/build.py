"""The build-m3w Beam graph: WARC files → interleaved documents with their images → shards.

    paths ─ ListPageCaptures ──────┐ (url, provenance) only
    paths ─ ReadWarcFiles ─── pages ─ DeduplicateUrls ─ ExtractDocuments ─ FilterText ─┐
    paths ─ ReadReferencedImages (side input: image URLs the documents cite) ◄──────────┤
                                 └─ SelectReferencedImages ◄────────────────────────────┤
                                 (FetchImages for missing) ─ ProcessImages ─ AttachImages
      ─ DropRepeatedImages ─ Decontaminate ─ DeduplicateDocuments ─ FinalizeDocuments ─ WriteShards
    every stage's ``rejects`` (single or batched) ─ lines spilled to sorted runs in that stage ─ WriteRejects

Run it with ``build-m3w build`` (pipeline/cli.py) or ``run(argv)``; runner options pass through.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.config import Config
from pipeline.outputs import DECONTAMINATION_DIR, REJECTS_DIR
from pipeline.records import Reject, keep_sampled
from schemas.document import Document, ImageNode



class FinalizeDocuments(beam.PTransform):
    """PCollection[Document] → tagged ``documents`` / ``rejects``: caps images per document and
    applies the document image-count rule now that images are resolved."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, docs: beam.PCollection) -> Any:
        return docs | "CheckImageCount" >> beam.ParDo(_FinalizeFn(self.cfg)).with_outputs("rejects", main="documents")


class _FinalizeFn(beam.DoFn):
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.kept = Metrics.counter("m3w", "finalize.kept")
        self.capped = Metrics.counter("m3w", "finalize.images_over_cap")
        self._dropped: dict[str, Any] = {}

    def process(self, doc: Document) -> Iterator[Any]:
        from pipeline.filters import image_count_reason

        cap = self.cfg.images.max_images_per_doc
        if cap is not None:
            seen = 0
            nodes = []
            for node in doc.nodes:
                if isinstance(node, ImageNode):
                    seen += 1
                    if seen > cap:
                        self.capped.inc()
                        continue
                nodes.append(node)
            doc.nodes = nodes
        reason = image_count_reason(doc, self.cfg)
        if reason:
            name = f"finalize.dropped_{reason}"
            if name not in self._dropped:
                self._dropped[name] = Metrics.counter("m3w", name)
            self._dropped[name].inc()
            yield beam.pvalue.TaggedOutput(
                "rejects", Reject.of("finalize", reason, doc.provenance, doc.url, f"images={len(doc.images)}")
            )
            return
        self.kept.inc()
        yield doc


class _ProgressFn(beam.DoFn):
    """Prints pages read per worker every few seconds: long local runs show they are moving."""

    EVERY_S = 10.0

    def setup(self) -> None:
        self.pages, self.started, self.last = 0, time.monotonic(), time.monotonic()

    def process(self, page: Any) -> Iterator[Any]:
        self.pages += 1
        now = time.monotonic()
        if now - self.last >= self.EVERY_S:
            self.last = now
            rate = self.pages / (now - self.started)
            print(f"build-m3w: [worker {os.getpid()}] {self.pages:,} pages read ({rate:,.0f}/s)", file=sys.stderr, flush=True)
        yield page


class _DropImagelessFn(beam.DoFn):
    """A document with no image node can never meet ``doc_min_images`` ≥ 1: drop it before the joins."""

    def __init__(self) -> None:
        self.dropped = Metrics.counter("m3w", "finalize.dropped_doc_min_images")

    def process(self, doc: Document) -> Iterator[Any]:
        if any(isinstance(n, ImageNode) for n in doc.nodes):
            yield doc
            return
        self.dropped.inc()
        yield beam.pvalue.TaggedOutput("rejects", Reject.of("finalize", "doc_min_images", doc.provenance, doc.url, "images=0"))


def rejects_to_lines(rate: float) -> Any:
    """A Reject or a list of them → one list of JSON lines, each kept in a deterministic ``rate``
    sample by its content (counters count them all)."""

    def to_lines(item: Reject | list[Reject]) -> Iterator[list[str]]:
        lines = [
            line
            for r in (item if isinstance(item, list) else (item,))
            # flat dataclass: vars() is 10x dataclasses.asdict()
            if keep_sampled(line := json.dumps(dict(vars(r)), sort_keys=True, ensure_ascii=False), rate)
        ]
        if lines:
            yield lines

    return to_lines


def build_pipeline(p: beam.Pipeline, inputs: list[str], output: str, cfg: Config) -> None:
    """Add the whole build graph to ``p``: ``inputs`` are matched file paths, ``output`` a directory."""
    from dedup.decontaminate import Decontaminate
    from dedup.documents import DeduplicateDocuments
    from dedup.urls import DeduplicateUrls
    from pipeline.extract_stage import ExtractDocuments
    from pipeline.filters_stage import FilterText
    from pipeline.images import DropRepeatedImages, ProcessImages
    from pipeline.join import AttachImages, SelectReferencedImages, image_refs
    from pipeline.shards import WriteShards, WriteSortedJsonLines
    from pipeline.warc_stage import ListPageCaptures, ReadReferencedImages, ReadWarcFiles

    rejects = []
    paths = p | "WarcPaths" >> beam.Create(sorted(inputs))
    read = paths | "ReadWarcFiles" >> ReadWarcFiles(cfg.limits)
    rejects.append(read.rejects)

    pages = read.pages | "ShowProgress" >> beam.ParDo(_ProgressFn())
    if cfg.dedup.url:
        captures = paths | "ListPageCaptures" >> ListPageCaptures(cfg.limits)
        dedup_urls = (captures, pages) | "DeduplicateUrls" >> DeduplicateUrls(cfg.dedup)
        pages = dedup_urls.pages
        rejects.append(dedup_urls.rejects)
    extracted = pages | "ExtractDocuments" >> ExtractDocuments(cfg.extract, cfg.limits)
    rejects.append(extracted.rejects)
    filtered = extracted.documents | "FilterText" >> FilterText(cfg)
    rejects.append(filtered.rejects)
    docs = filtered.documents
    if (cfg.text_filters.doc_min_images or 0) >= 1:
        imageless = docs | "DropImagelessDocuments" >> beam.ParDo(_DropImagelessFn()).with_outputs("rejects", main="documents")
        rejects.append(imageless.rejects)
        docs = imageless.documents

    referenced = (
        docs
        | "ReferencedImageUrls" >> beam.FlatMap(lambda d: (key for key, _ in image_refs(d)))
        | "DistinctImageUrls" >> beam.Distinct()
        | "AsKeys" >> beam.Map(lambda key: (key, None))
    )
    images = paths | "ReadReferencedImages" >> ReadReferencedImages(beam.pvalue.AsDict(referenced), cfg.limits)
    selected = (docs, images) | "SelectReferencedImages" >> SelectReferencedImages()
    records = selected.records
    missing = selected.missing
    if cfg.images.fetch:
        from pipeline.fetch import ARCHIVE_DIR, FetchImages

        fetched = (missing, docs) | "FetchImages" >> FetchImages(cfg.fetch, os.path.join(output, ARCHIVE_DIR), cfg.images)
        rejects.append(fetched.rejects)
        records = (records, fetched.images) | "AllImageRecords" >> beam.Flatten()
    else:
        rejects.append(selected.missing_rejects)
    processed = records | "ProcessImages" >> ProcessImages(cfg.images, cfg.limits)
    rejects.append(processed.rejects)
    attached = (docs, processed.images) | "AttachImages" >> AttachImages()
    rejects.append(attached["rejects"])
    docs = attached["documents"]

    repeated = docs | "DropRepeatedImages" >> DropRepeatedImages(cfg.images)
    rejects.append(repeated.rejects)
    docs = repeated.documents
    if cfg.decontamination.index:
        decon = docs | "Decontaminate" >> Decontaminate(cfg.decontamination.index, cfg.decontamination)
        rejects.append(decon.rejects)
        docs = decon.documents
        _ = (
            decon.matches
            | "MatchesToJson" >> beam.Map(lambda m: [json.dumps(m, sort_keys=True, ensure_ascii=False)])
            | "WriteDecontaminationReport" >> WriteSortedJsonLines(output, f"{DECONTAMINATION_DIR}/matches")
        )
    if cfg.dedup.minhash or cfg.dedup.image_set or cfg.dedup.paragraph_max_per_domain is not None:
        deduped = docs | "DeduplicateDocuments" >> DeduplicateDocuments(cfg.dedup)
        rejects.append(deduped.rejects)
        docs = deduped.documents
    final = docs | "FinalizeDocuments" >> FinalizeDocuments(cfg)
    rejects.append(final.rejects)

    _ = final.documents | "WriteShards" >> WriteShards(output, cfg.output.formats, cfg.output.shard_size)
    if cfg.output.rejects:
        # Each stage's rejects are turned into lines and spilled to sorted runs where they are
        # made; only the runs' descriptors meet in a Flatten (no reject line is buffered between stages).
        to_lines = rejects_to_lines(cfg.output.rejects_sample_rate)
        _ = tuple(rejects) | "WriteRejects" >> WriteSortedJsonLines(output, f"{REJECTS_DIR}/rejects", to_lines=to_lines)
