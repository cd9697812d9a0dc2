"""Exact URL dedup: one page per normalised URL, the newest capture kept (OBELICS)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

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


class _NewestPage(beam.CombineFn):
    """Accumulator: (best Page or None, provenances of the captures it beat).

    Combining keeps one page per key per bundle, so only small provenance records of the losers
    travel through the shuffle, not their HTML.
    """

    def create_accumulator(self) -> tuple[Page | None, list[Provenance]]:
        return (None, [])

    def add_input(self, acc: tuple[Page | None, list[Provenance]], page: Page) -> tuple[Page | None, list[Provenance]]:
        return self.merge_accumulators([acc, (page, [])])

    def merge_accumulators(self, accs: Any) -> tuple[Page | None, list[Provenance]]:
        best: Page | None = None
        losers: list[Provenance] = []
        for page, lost in accs:
            losers.extend(lost)
            if page is None:
                continue
            if best is None:
                best = page
            elif capture_rank(page.provenance) > capture_rank(best.provenance):
                losers.append(best.provenance)
                best = page
            else:
                losers.append(page.provenance)
        return (best, losers)

    def extract_output(self, acc: tuple[Page | None, list[Provenance]]) -> tuple[Page | None, list[Provenance]]:
        return acc


class _EmitKeptPage(beam.DoFn):
    def __init__(self) -> None:
        self.kept = Metrics.counter("m3w", "dedup.url_kept")
        self.dropped = Metrics.counter("m3w", "dedup.dropped_duplicate_url")

    def process(self, item: tuple[str, tuple[Page | None, list[Provenance]]]) -> Iterator[Any]:
        _, (page, losers) = item
        assert page is not None, "a URL group always holds at least one page"
        self.kept.inc()
        yield page
        for prov in sorted(losers, key=capture_rank):
            self.dropped.inc()
            yield beam.pvalue.TaggedOutput(
                "rejects", Reject.of(STAGE, "duplicate_url", prov, url=page.url, detail=describe(page.provenance))
            )


class DeduplicateUrls(beam.PTransform):
    """PCollection[Page] → tagged ``pages`` (one per normalised URL: the newest capture) and
    ``rejects`` (stage "dedup", reason "duplicate_url", detail names the kept capture)."""

    def __init__(self, cfg: DedupConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, pages: beam.PCollection) -> Any:
        return (
            pages
            | "KeyByNormalizedUrl" >> beam.Map(lambda p: (normalize_url(p.url), p))
            | "NewestCapturePerUrl" >> beam.CombinePerKey(_NewestPage())
            | "EmitKeptPages" >> beam.ParDo(_EmitKeptPage()).with_outputs("rejects", main="pages")
        )
