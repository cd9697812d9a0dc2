"""``FilterText``: the Beam stage of pipeline.filters (Document → kept Document, batched rejects).
The filters themselves (``filter_document``, ``filter_documents``) need no Beam.
"""
from __future__ import annotations

import collections
from typing import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from pipeline import langid
from pipeline.config import Config
from pipeline.filters import (
    BATCH_DOCS,
    NODE_LANGUAGE,
    PERPLEXITY,
    STAGE,
    _kernel_char_table,
    doc_checks,
    filter_documents,
    node_checks,
)
from pipeline.records import Rejects
from schemas.document import Document


class _FilterTextFn(beam.DoFn):
    """Document -> kept Document (main) and a ``Rejects`` batch per flush and window (tag ``rejects``).

    Documents are buffered and filtered ``BATCH_DOCS`` at a time (``filter_documents``); each
    output keeps its input's window and timestamp, and outputs follow the input order within a
    bundle."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        langid.load(self.cfg.language.detector)
        _kernel_char_table()  # 64k-entry character table, built once per worker
        self._kept = Metrics.counter("m3w", f"{STAGE}.kept")
        self._counters: dict[str, beam.metrics.metricbase.Counter] = {}
        tf = self.cfg.text_filters
        names = [c.name for c in node_checks(tf)]
        for n in names + ([NODE_LANGUAGE] if self.cfg.language.node_min_chars is not None else []):
            self._counter(f"nodes_dropped_{n}")
        for n in [c.name for c in doc_checks(tf)] + ["language", "language_score", "url_domain_blocklist", "url_substring_blocklist"]:
            self._counter(f"dropped_{n}")
        if tf.perplexity_model is not None and tf.doc_max_perplexity is not None:
            from pipeline import perplexity

            perplexity.load(tf.perplexity_model)  # in setup: a bad model fails the worker at start
            self._counter(f"dropped_{PERPLEXITY}")

    def _counter(self, name: str):
        c = self._counters.get(name)
        if c is None:
            c = self._counters[name] = Metrics.counter("m3w", f"{STAGE}.{name}")
        return c

    def start_bundle(self) -> None:
        self._buffer: list[tuple[Document, object, object]] = []  # (document, window, timestamp)

    def process(self, doc: Document, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam) -> Iterator:
        self._buffer.append((doc, window, timestamp))
        if len(self._buffer) >= BATCH_DOCS:
            yield from self._flush()

    def finish_bundle(self) -> Iterator:
        yield from self._flush()

    def _flush(self) -> Iterator:
        buffered, self._buffer = self._buffer, []
        if not buffered:
            return
        results = filter_documents([d for d, _, _ in buffered], self.cfg)
        batch = Rejects()  # one element per window: node rejects are many
        batch_window = None
        dropped: collections.Counter[str] = collections.Counter()  # one counter update per reason
        kept_docs = 0
        for (doc, window, timestamp), (kept, rejects) in zip(buffered, results):
            if rejects:
                n_node_rejects = len(rejects) - (kept is None)
                dropped.update("nodes_dropped_" + r.reason for r in rejects[:n_node_rejects])
                if kept is None:
                    dropped["dropped_" + rejects[-1].reason] += 1
            if rejects and self.cfg.output.rejects:
                if batch and window != batch_window:
                    yield beam.pvalue.TaggedOutput("rejects", WindowedValue(batch, batch_ts, (batch_window,)))
                    batch = Rejects()
                if not batch:
                    batch_window, batch_ts = window, timestamp
                batch += rejects
            if kept is not None:
                kept_docs += 1
                yield WindowedValue(kept, timestamp, (window,))
        if kept_docs:
            self._kept.inc(kept_docs)
        for name, n in dropped.items():
            self._counter(name).inc(n)
        if batch:
            yield beam.pvalue.TaggedOutput("rejects", WindowedValue(batch, batch_ts, (batch_window,)))


class FilterText(beam.PTransform):
    """PCollection[Document] -> DoOutputsTuple: ``documents`` (kept, failing text nodes removed,
    language set) and ``rejects``: ``Rejects`` batches (every dropped node and document of a
    batch of documents in one window; ``RejectsToJson`` samples them)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, docs):
        return docs | "FilterTextNodesAndDocs" >> beam.ParDo(_FilterTextFn(self.cfg)).with_outputs(
            "rejects", main="documents"
        )
