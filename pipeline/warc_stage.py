"""The Beam stages of the WARC reader (pipeline.warc): byte ranges, the read, the captures list and
the referenced images. The reading itself (``iter_warc``, ``iter_range``) needs no Beam.
"""
from __future__ import annotations

import collections
from typing import Iterator

import apache_beam as beam

from pipeline.config import LimitsConfig
from pipeline.records import ImageRecord, Page
from pipeline.warc import SPLIT_BYTES, iter_range, page_captures, split_ranges


class SplitWarcFiles(beam.PTransform):
    """PCollection[str path] → PCollection[(path, start, end)]: each file as byte ranges
    (``split_ranges``), spread over the workers by a Reshuffle. So one big WARC is read by as
    many workers as it has ranges, on the local runner as on Flink, Spark or Dataflow."""

    def __init__(self, range_bytes: int = SPLIT_BYTES, label: str | None = None):
        super().__init__(label)
        self._range_bytes = range_bytes

    def expand(self, paths):
        return (
            paths
            | "ByteRanges" >> beam.FlatMap(split_ranges, self._range_bytes)
            | "SpreadRanges" >> beam.Reshuffle()
        )


class ListPageCaptures(beam.PTransform):
    """PCollection[str path] → PCollection[(url, Provenance)] of every HTML page: a second,
    body-free read of the files, so URL dedup shuffles a few hundred bytes per page instead of
    the pages themselves (a runner that buffers shuffles in memory, like the local one, would
    otherwise hold the crawl's whole HTML)."""

    def __init__(self, limits: LimitsConfig | None = None, label: str | None = None, range_bytes: int = SPLIT_BYTES):
        super().__init__(label)
        self._limits = limits or LimitsConfig()
        self._range_bytes = range_bytes

    def expand(self, paths):
        limits = self._limits
        return paths | "SplitFiles" >> SplitWarcFiles(self._range_bytes) | "ReadCaptures" >> beam.FlatMap(page_captures, limits)


class _ReferencedImagesFn(beam.DoFn):
    """path → the ImageRecords whose normalised URL a kept document references."""

    def __init__(self, limits: LimitsConfig):
        self._limits = limits
        self._unreferenced = beam.metrics.Metrics.counter("m3w", "join.crawled_images_unreferenced")

    def process(self, rng: tuple[str, int, int | None], referenced: dict) -> Iterator[ImageRecord]:
        from pipeline.urls import normalize_url

        for item in iter_range(rng, self._limits):
            if isinstance(item, ImageRecord):
                if normalize_url(item.url) in referenced:
                    yield item
                else:
                    self._unreferenced.inc()


class ReadReferencedImages(beam.PTransform):
    """PCollection[str path] → PCollection[ImageRecord]: the image records of the files whose
    normalised URL is a key of ``referenced`` (a side input), read in a pass of their own once
    the documents are known. So the image join shuffles the images the corpus cites, not every
    image of the crawl (a runner that buffers shuffles in memory would hold them all)."""

    def __init__(
        self, referenced: beam.pvalue.AsSideInput, limits: LimitsConfig | None = None, label: str | None = None, range_bytes: int = SPLIT_BYTES
    ):
        super().__init__(label)
        self._referenced = referenced
        self._limits = limits or LimitsConfig()
        self._range_bytes = range_bytes

    def expand(self, paths):
        return (
            paths
            | "SplitFiles" >> SplitWarcFiles(self._range_bytes)
            | "ReadImages" >> beam.ParDo(_ReferencedImagesFn(self._limits), referenced=self._referenced)
        )


class _ReadWarcFn(beam.DoFn):
    """path → pages (main), images, rejects; counters under namespace m3w."""

    def __init__(self, limits: LimitsConfig):
        self._limits = limits

    def setup(self):
        self._records = beam.metrics.Metrics.counter("m3w", "read.records")
        self._pages = beam.metrics.Metrics.counter("m3w", "read.html_pages")
        self._images = beam.metrics.Metrics.counter("m3w", "read.images")
        self._files = beam.metrics.Metrics.counter("m3w", "read.files")
        self._by_reason: dict[str, beam.metrics.metric.Metrics.DelegatingCounter] = {}

    def _counter(self, name: str):
        c = self._by_reason.get(name)
        if c is None:
            c = self._by_reason[name] = beam.metrics.Metrics.counter("m3w", f"read.{name}")
        return c

    def process(self, rng: tuple[str, int, int | None]):
        stats: collections.Counter = collections.Counter()
        flushed: collections.Counter = collections.Counter()
        if rng[1] == 0:
            self._files.inc()
        for item in iter_range(rng, self._limits, stats):
            if isinstance(item, Page):
                yield item
            elif isinstance(item, ImageRecord):
                yield beam.pvalue.TaggedOutput("images", item)
            else:
                self._counter(f"dropped_{item.reason}").inc()
                yield beam.pvalue.TaggedOutput("rejects", item)
            if sum(stats.values()) - sum(flushed.values()) > 1000:
                self._flush(stats, flushed)
        self._flush(stats, flushed)

    def _flush(self, stats: collections.Counter, flushed: collections.Counter) -> None:
        for key, value in stats.items():
            delta = value - flushed[key]
            if not delta:
                continue
            flushed[key] = value
            if key == "records":
                self._records.inc(delta)
            elif key == "html_pages":
                self._pages.inc(delta)
            elif key == "images":
                self._images.inc(delta)
            else:
                self._counter(key).inc(delta)


class ReadWarcFiles(beam.PTransform):
    """PCollection[str path] → DoOutputsTuple: ``pages`` (Page), ``images`` (ImageRecord), ``rejects`` (Reject).

    Paths come from ``match_inputs``; each file is cut into byte ranges (``SplitWarcFiles``) that
    a Reshuffle spreads over workers before reading, so one big file uses every worker.
    Counters: ``read.records``, ``read.html_pages``, ``read.images``, ``read.dropped_<reason>`` and
    ``read.skipped_<record type>`` for records that carry no page content.
    """

    def __init__(self, limits: LimitsConfig | None = None, label: str | None = None, range_bytes: int = SPLIT_BYTES):
        super().__init__(label)
        self._limits = limits or LimitsConfig()
        self._range_bytes = range_bytes

    def expand(self, paths):
        return (
            paths
            | "SplitFiles" >> SplitWarcFiles(self._range_bytes)
            | "ReadRecords" >> beam.ParDo(_ReadWarcFn(self._limits)).with_outputs("images", "rejects", main="pages")
        )
