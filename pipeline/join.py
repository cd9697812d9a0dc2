"""Joining image records to the documents that reference them, by normalised URL.

Two CoGroupByKeys, so the join works whatever file or worker an image came from:
1. ``SelectReferencedImages``: (url → referencing doc ids) ⋈ (url → crawled image records) keeps
   one record per referenced URL (only those get decoded) and lists referenced URLs the crawl lacks.
2. ``AttachImages``: (url → doc ids) ⋈ (url → resolved image) → (doc_id → resolved images)
   ⋈ (doc_id → document) → the document with image bytes and metadata in place. Image nodes that
   did not resolve are removed (already counted by the stage that dropped them).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from dedup.urls import capture_rank
from pipeline.records import ImageRecord, Reject
from pipeline.urls import normalize_url
from schemas.document import Document, ImageNode


def image_refs(doc: Document) -> Iterator[tuple[str, str]]:
    """(normalised image URL, doc_id) once per distinct image URL of the document."""
    seen = set()
    for node in doc.nodes:
        if isinstance(node, ImageNode):
            key = normalize_url(node.url)
            if key not in seen:
                seen.add(key)
                yield key, doc.doc_id


def image_refs_with_source(doc: Document) -> Iterator[tuple[str, tuple[str, str, str, int]]]:
    """Like ``image_refs``, with the referencing page's URL and WARC location (for rejects)."""
    for key, doc_id in image_refs(doc):
        yield key, (doc_id, doc.url, doc.provenance.warc_filename, doc.provenance.warc_record_offset)


def choose_record(records: list[ImageRecord]) -> ImageRecord:
    """The newest capture, by the same rank URL dedup keeps pages with (dates compared as times,
    then file and offset): the choice never depends on arrival order."""
    return max(records, key=lambda r: capture_rank(r.provenance))


class _SelectFn(beam.DoFn):
    def __init__(self) -> None:
        self.referenced = Metrics.counter("m3w", "join.images_referenced")
        self.in_crawl = Metrics.counter("m3w", "join.images_in_crawl")
        self.missing = Metrics.counter("m3w", "join.images_missing")
        self.unreferenced = Metrics.counter("m3w", "join.crawled_images_unreferenced")

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        url, groups = element
        # One pass over each group, holding only the first reference and the best capture: a
        # URL cited by a million pages, or captured a thousand times, costs no memory here.
        n_refs, first = 0, None
        for ref in groups["refs"]:
            n_refs += 1
            if first is None or ref < first:
                first = ref
        if not n_refs:
            self.unreferenced.inc(sum(1 for _ in groups["records"]))
            return
        self.referenced.inc()
        best = None
        for record in groups["records"]:
            if best is None or capture_rank(record.provenance) > capture_rank(best.provenance):
                best = record
        if best is not None:
            self.in_crawl.inc()
            best.url = url
            yield best
        else:
            self.missing.inc()
            yield beam.pvalue.TaggedOutput("missing", url)
            # The image has no record of its own: its provenance is the first page (by id) citing it.
            _, page_url, warc, offset = first
            yield beam.pvalue.TaggedOutput(
                "missing_rejects",
                Reject("join", "image_not_in_crawl", url, warc, offset, f"referenced by {n_refs} document(s), first {page_url}"),
            )


class SelectReferencedImages(beam.PTransform):
    """(PCollection[Document], PCollection[ImageRecord]) → tagged ``records`` (one ImageRecord per
    referenced URL found in the crawl, url normalised), ``missing`` (referenced URLs not in it) and
    ``missing_rejects`` (one Reject per missing URL, with the citing page's provenance)."""

    def expand(self, pcolls: tuple[beam.PCollection, beam.PCollection]) -> Any:
        docs, records = pcolls
        refs = docs | "ImageRefs" >> beam.FlatMap(image_refs_with_source)
        keyed = records | "KeyRecordsByUrl" >> beam.Map(lambda r: (normalize_url(r.url), r))
        return (
            {"refs": refs, "records": keyed}
            | "GroupByImageUrl" >> beam.CoGroupByKey()
            | "SelectRecord" >> beam.ParDo(_SelectFn()).with_outputs("missing", "missing_rejects", main="records")
        )


class _AttachFn(beam.DoFn):
    def __init__(self) -> None:
        self.attached = Metrics.counter("m3w", "join.images_attached")
        self.unresolved = Metrics.counter("m3w", "join.image_nodes_unresolved")
        self.docs = Metrics.counter("m3w", "join.documents")
        self.duplicates = Metrics.counter("m3w", "join.dropped_duplicate_doc_id")

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        _, groups = element
        docs = list(groups["doc"])
        if not docs:
            return
        # Ids are unique per input path and record; should two documents still share one (the same
        # file read twice), the first by provenance is kept and the others are rejects.
        docs.sort(key=lambda d: (d.provenance.warc_filename, d.provenance.warc_record_offset, d.url))
        doc = docs[0]
        for other in docs[1:]:
            self.duplicates.inc()
            yield beam.pvalue.TaggedOutput(
                "rejects", Reject.of("join", "duplicate_doc_id", other.provenance, other.url, f"doc_id={other.doc_id}")
            )
        resolved = {url: img for url, img in groups["images"]}
        nodes = []
        for node in doc.nodes:
            if isinstance(node, ImageNode):
                img = resolved.get(normalize_url(node.url))
                if img is None:
                    self.unresolved.inc()
                    continue
                node = img.apply_to(node)
                self.attached.inc()
            nodes.append(node)
        doc.nodes = nodes
        self.docs.inc()
        yield doc


class AttachImages(beam.PTransform):
    """(PCollection[Document], PCollection[ResolvedImage]) → {"documents": Document with images
    resolved, "rejects": Reject (a second document under an id already taken)}.

    Documents without image nodes skip the join (no shuffle of their text)."""

    def expand(self, pcolls: tuple[beam.PCollection, beam.PCollection]) -> beam.PCollection:
        docs, images = pcolls
        split = docs | "SplitByImages" >> beam.Partition(lambda d, _: 0 if any(isinstance(n, ImageNode) for n in d.nodes) else 1, 2)
        with_images, without_images = split[0], split[1]
        refs = with_images | "ImageRefs" >> beam.FlatMap(image_refs)
        by_url = images | "KeyImagesByUrl" >> beam.Map(lambda img: (normalize_url(img.url), img))
        per_doc = (
            {"refs": refs, "image": by_url}
            | "GroupByImageUrl" >> beam.CoGroupByKey()
            | "FanOutToDocs" >> beam.FlatMap(_fan_out)
        )
        attached = (
            {"doc": with_images | "KeyDocsById" >> beam.Map(lambda d: (d.doc_id, d)), "images": per_doc}
            | "GroupByDocument" >> beam.CoGroupByKey()
            | "Attach" >> beam.ParDo(_AttachFn()).with_outputs("rejects", main="documents")
        )
        documents = (attached.documents, without_images | "CountTextOnly" >> beam.Map(_count_text_only)) | "AllDocuments" >> beam.Flatten()
        return {"documents": documents, "rejects": attached.rejects}


_TEXT_ONLY = Metrics.counter("m3w", "join.documents")


def _count_text_only(doc: Document) -> Document:
    _TEXT_ONLY.inc()
    return doc


def _fan_out(element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[tuple[str, tuple[str, Any]]]:
    url, groups = element
    images = list(groups["image"])
    if not images:
        return
    img = images[0]  # one per URL by construction (SelectReferencedImages)
    for doc_id in groups["refs"]:
        yield doc_id, (url, img)
