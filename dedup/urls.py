"""Exact URL dedup: one page per normalised URL, the newest capture kept (OBELICS)."""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.config import DedupConfig
from pipeline.records import Page, Reject
from pipeline.urls import normalize_url
from schemas.document import Provenance

STAGE = "dedup"


def capture_time(date: str) -> float:
    """Seconds since the epoch of an ISO 8601 capture date; -inf when it does not parse.

    Dates without a zone are taken as UTC (WARC-Date is UTC by definition).
    """
    try:
        dt = datetime.fromisoformat(date.strip())
    except (ValueError, AttributeError):
        return float("-inf")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def capture_rank(prov: Provenance) -> tuple[float, str, str, int]:
    """Larger is preferred: the newest capture, then a deterministic tie-break on where it is stored
    (WARC file name, then the record offset), so every run keeps the same page."""
    return (
        capture_time(prov.capture_date),
        prov.capture_date,
        os.path.basename(prov.warc_filename),
        prov.warc_record_offset,
    )


def describe(prov: Provenance) -> str:
    """The kept capture, as written in a reject's ``detail``."""
    return f"kept {prov.capture_date} {os.path.basename(prov.warc_filename)}@{prov.warc_record_offset}"


def duplicate_captures(item: tuple[str, Iterable[tuple[str, Provenance]]]) -> Iterator[tuple[tuple[str, int], Reject]]:
    """One URL's captures → ((WARC file, offset), Reject) for every capture but the newest."""
    _, captures = item
    ranked = sorted(captures, key=lambda c: capture_rank(c[1]))
    url, kept = ranked[-1]
    for _, prov in ranked[:-1]:
        yield (prov.warc_filename, prov.warc_record_offset), Reject.of(STAGE, "duplicate_url", prov, url=url, detail=describe(kept))


class _KeepNewestFn(beam.DoFn):
    """Pages whose capture is not a duplicate's location pass on."""

    def __init__(self) -> None:
        self.kept = Metrics.counter("m3w", "dedup.url_kept")

    def process(self, page: Page, duplicates: dict) -> Iterator[Page]:
        if (page.provenance.warc_filename, page.provenance.warc_record_offset) not in duplicates:
            self.kept.inc()
            yield page


def _count_dropped(item: tuple[tuple[str, int], Reject]) -> Reject:
    _DROPPED.inc()
    return item[1]


_DROPPED = Metrics.counter("m3w", "dedup.dropped_duplicate_url")


class UrlDedupOutputs(NamedTuple):
    pages: beam.PCollection
    rejects: beam.PCollection


class DeduplicateUrls(beam.PTransform):
    """(captures, pages) → tagged ``pages`` (one per normalised URL: the newest capture) and
    ``rejects`` (stage "dedup", reason "duplicate_url", detail names the kept capture).

    ``captures`` are (url, Provenance) of every page (``pipeline.warc.ListPageCaptures``): only
    they are grouped by URL, and the pages stream through a filter whose side input is the
    locations of the duplicates, so no page body is ever shuffled or held."""

    def __init__(self, cfg: DedupConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, pcolls: tuple[beam.PCollection, beam.PCollection]) -> Any:
        captures, pages = pcolls
        duplicates = (
            captures
            | "KeyByNormalizedUrl" >> beam.Map(lambda c: (normalize_url(c[0]), c))
            | "GroupCapturesByUrl" >> beam.GroupByKey()
            | "AllButNewest" >> beam.FlatMap(duplicate_captures)
        )
        kept = pages | "DropOlderCaptures" >> beam.ParDo(_KeepNewestFn(), duplicates=beam.pvalue.AsDict(duplicates))
        rejects = duplicates | "CountDropped" >> beam.Map(_count_dropped)
        return UrlDedupOutputs(kept, rejects)
