"""``ExtractDocuments``: the Beam stage of pipeline.extract (Page → Document, with counted rejects).

Each DoFn instance keeps one extraction process (pipeline.extract_guard) for its lifetime, so a
page that stalls the parser costs at most ``limits.parse_timeout_s`` and becomes a reject.
"""
from __future__ import annotations

import apache_beam as beam

from pipeline.config import ExtractConfig, LimitsConfig
from pipeline.extract import DROP_REASONS, STAGE, ExtractionError
from pipeline.extract_guard import GuardedExtractor
from pipeline.records import Page, Reject


class _ExtractFn(beam.DoFn):
    def __init__(self, cfg: ExtractConfig, limits: LimitsConfig) -> None:
        self.cfg = cfg
        self.limits = limits
        self.extractor: GuardedExtractor | None = None
        self.pages = beam.metrics.Metrics.counter("m3w", f"{STAGE}.pages")
        self.documents = beam.metrics.Metrics.counter("m3w", f"{STAGE}.documents")
        self.images_found = beam.metrics.Metrics.counter("m3w", f"{STAGE}.images_found")
        self.dropped = {r: beam.metrics.Metrics.counter("m3w", f"{STAGE}.dropped_{r}") for r in DROP_REASONS}

    def setup(self) -> None:
        self.extractor = GuardedExtractor(self.cfg, self.limits)

    def teardown(self) -> None:
        if self.extractor is not None:
            self.extractor.close()
            self.extractor = None

    def _drop(self, reason: str):
        c = self.dropped.get(reason)
        if c is None:
            c = self.dropped[reason] = beam.metrics.Metrics.counter("m3w", f"{STAGE}.dropped_{reason}")
        return c

    def process(self, page: Page):
        self.pages.inc()
        if self.extractor is None:  # a runner that skips setup()
            self.setup()
        try:
            doc = self.extractor.extract(page)
        except ExtractionError as e:
            self._drop(e.reason).inc()
            yield beam.pvalue.TaggedOutput("rejects", Reject.of(STAGE, e.reason, page.provenance, page.url, e.detail))
            return
        except (ValueError, UnicodeError, RecursionError) as e:  # lexbor on malformed input (in-process runs)
            self._drop("parse_error").inc()
            yield beam.pvalue.TaggedOutput(
                "rejects", Reject.of(STAGE, "parse_error", page.provenance, page.url, f"{type(e).__name__}: {e}")
            )
            return
        self.documents.inc()
        self.images_found.inc(len(doc.images))
        yield doc


class ExtractDocuments(beam.PTransform):
    """PCollection[Page] → DoOutputsTuple: ``documents`` (Document, main) and ``rejects`` (Reject)."""

    def __init__(self, cfg: ExtractConfig | None = None, limits: LimitsConfig | None = None, label: str | None = None):
        super().__init__(label)
        self.cfg = cfg or ExtractConfig()
        self.limits = limits or LimitsConfig()

    def expand(self, pages):
        return pages | "WalkDom" >> beam.ParDo(_ExtractFn(self.cfg, self.limits)).with_outputs(
            "rejects", main="documents"
        )
