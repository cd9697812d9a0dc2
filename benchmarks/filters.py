"""Throughput of the default text filter chain on real extracted documents, one core.

    .venv/bin/python -m benchmarks.filters [--rounds 5] [--data ../shared/data]

Documents: every HTML page of the article-extraction benchmark, the Python docs and Debian
handbook crawls, the archive.org Heritrix crawl, the Common Crawl sample and the trafilatura test
pages, extracted once with ``pipeline.extract.extract_document`` before timing starts.

Timed, in the same process and on the same documents:
- chain: ``pipeline.filters.filter_document(doc, Config())`` — URL blocklists (off by default),
  language ID, paragraph filters, document filters, and the kept document and rejects built —
  what ``FilterText`` runs per document;
- anchor: a bare loop that only tokenizes the same text nodes with ``pipeline.filters.words``
  (lower-case, whitespace split, strip punctuation) — the least any word-based filter must do;
- parts: language ID alone; the compiled checks alone (``TextChain.run`` on every document's
  text nodes, language ignored); the chain with language ID turned off (``keep``/``min_score``
  None, so every document reaches the paragraph and document checks); the chain with the
  ``obelics`` preset (OBELICS's paragraph and document checks, punctuation and common words
  included);
- reference chain: the same checks measured text by text on ``TextStats`` (the Python definitions
  ``build-m3w explain`` prints), with the same verdicts — what compiling the chain gains.
Reported: documents/s for each, and chain time / anchor time; then the same per source. The
language detectors are compared by ``benchmarks/langid.py``.
"""
from __future__ import annotations

import argparse
import gc
import gzip
import platform
import time
from pathlib import Path

from pipeline import filters as F
from pipeline import langid
from pipeline.config import Config, load_config
from pipeline.extract import ExtractionError, extract_document
from pipeline.records import Page
from pipeline.warc import iter_warc
from schemas.document import Document, Provenance, TextNode

WARCS = [
    "warc/local_wget_crawls/pydocs.warc.gz",
    "warc/local_wget_crawls/handbook-fr-de.warc.gz",
    "warc/aut_test_resources/example.warc.gz",
    "warc/resiliparse_tests/warcfile.warc.gz",
]
HTML_DIRS = ["extraction/article_benchmark/html", "extraction/trafilatura/cache"]


def load_documents(data: Path) -> list[Document]:
    pages: list[Page] = []
    for rel in WARCS:
        if (data / rel).exists():
            pages += [r for r in iter_warc(str(data / rel)) if isinstance(r, Page)]
    for rel in HTML_DIRS:
        for path in sorted((data / rel).glob("*.htm*")):
            raw = path.read_bytes()
            if path.suffix == ".gz":
                raw = gzip.decompress(raw)
            url = f"https://bench.example/{path.name}"
            pages.append(Page(url, Provenance(str(path), 0, len(raw), ""), raw.decode("utf-8", "replace")))
    docs = []
    for p in pages:
        try:
            docs.append(extract_document(p))
        except ExtractionError:
            pass  # pages without text are not filter input
    return docs


def _time(fn, docs: list[Document], rounds: int) -> float:
    """Best-of-``rounds`` CPU seconds of this process for one pass of ``fn`` over ``docs``.

    CPU time, not wall time: the figure is per core, and other processes on a shared machine
    do not inflate it.
    """
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        t0 = time.process_time()
        for d in docs:
            fn(d)
        best = min(best, time.process_time() - t0)
    return best


def reference_filter(doc: Document, cfg: Config) -> tuple[Document | None, list]:
    """``filter_document`` through the Python measures (``TextStats``) check by check."""
    tf = cfg.text_filters
    lang, score = F.identify(doc.texts, cfg.language)
    if F.language_reason(lang, score, cfg.language):
        return None, []
    node_cs, doc_cs = F.configured_checks(tf)
    stats = [F.TextStats(n.text) for n in doc.nodes if isinstance(n, TextNode)]
    failures = F.first_failures(node_cs, stats)
    kept = [s for s, f in zip(stats, failures) if f is None]
    (failed,) = F.first_failures(doc_cs, [F.TextStats.joined(kept)])
    return (None if failed else doc), [f for f in failures if f] + [failed]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = ap.parse_args(argv)

    docs = load_documents(Path(args.data))
    n_chars = sum(len(d.text) for d in docs)
    cfg = Config()
    no_lang = Config()
    no_lang.language.keep = None
    no_lang.language.min_score = None
    obelics = load_config(preset="obelics")  # every OBELICS check, punctuation and common words included
    lc = cfg.language
    langid.load(lc.detector)
    F.filter_document(docs[0], cfg)  # warm word lists
    F.filter_document(docs[0], obelics)

    def anchor(d: Document) -> None:
        for t in d.texts:
            if t:
                F.words(t)

    configured = F._configured(cfg.text_filters)
    chain = F.compiled_chain(configured[0], configured[1])
    node_texts = {id(d): [n.text for n in d.nodes if isinstance(n, TextNode)] for d in docs}
    results = {
        "anchor: tokenize text nodes": _time(anchor, docs, args.rounds),
        "chain: filter_document, defaults": _time(lambda d: F.filter_document(d, cfg), docs, args.rounds),
        "language ID alone": _time(lambda d: F.identify(d.texts, lc), docs, args.rounds),
        "compiled checks alone, every document (TextChain.run)": _time(lambda d: chain.run(node_texts[id(d)]), docs, args.rounds),
        "chain without language filter": _time(lambda d: F.filter_document(d, no_lang), docs, args.rounds),
        "chain, obelics preset": _time(
            lambda d: F.filter_document(d, obelics), docs, args.rounds
        ),
        "reference chain (TextStats, check by check)": _time(lambda d: reference_filter(d, cfg), docs, args.rounds),
    }
    same = sum((F.filter_document(d, cfg)[0] is None) == (reference_filter(d, cfg)[0] is None) for d in docs)
    kept = sum(F.filter_document(d, cfg)[0] is not None for d in docs)
    anchor_s = results["anchor: tokenize text nodes"]
    print(f"{len(docs)} documents, {n_chars / len(docs):.0f} characters each on average; {kept} kept by the chain")
    print(f"verdicts equal to the reference chain's on {same}/{len(docs)} documents")
    print(f"python {platform.python_version()}, {platform.processor() or platform.machine()}, best of {args.rounds}")
    print("| timed loop | documents/s (one core) | time / anchor |")
    print("| --- | ---: | ---: |")
    for name, s in results.items():
        print(f"| {name} | {len(docs) / s:,.0f} | {s / anchor_s:.2f}x |")

    # Chain against anchor, alternated round by round so both see the same load on a shared
    # machine: the paired ratios are steadier than two separate bests.
    paired = []
    for _ in range(args.rounds):
        a = _time(anchor, docs, 1)
        c = _time(lambda d: F.filter_document(d, cfg), docs, 1)
        paired.append(a / c)
    paired.sort()
    print(
        f"chain speed / anchor speed, alternated over {args.rounds} rounds: median {paired[len(paired) // 2]:.2f}x "
        f"(range {paired[0]:.2f}-{paired[-1]:.2f}x)"
    )

    print()
    print(
        "| source | documents | mean characters | chain documents/s | "
        "reference chain documents/s | anchor documents/s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    by_source: dict[str, list[Document]] = {}
    for d in docs:
        by_source.setdefault(_source(d), []).append(d)
    for name, group in sorted(by_source.items()):
        chain_s = _time(lambda d: F.filter_document(d, cfg), group, args.rounds)
        ref_s = _time(lambda d: reference_filter(d, cfg), group, args.rounds)
        anchor_g = _time(anchor, group, args.rounds)
        mean_chars = sum(len(d.text) for d in group) / len(group)
        print(
            f"| {name} | {len(group)} | {mean_chars:,.0f} | {len(group) / chain_s:,.0f} | "
            f"{len(group) / ref_s:,.0f} | {len(group) / anchor_g:,.0f} |"
        )


def _source(d: Document) -> str:
    path = d.provenance.warc_filename
    for key in ("article_benchmark", "trafilatura", "pydocs", "handbook", "aut_test", "resiliparse"):
        if key in path:
            return key
    return "other"


if __name__ == "__main__":
    main()
