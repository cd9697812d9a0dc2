"""Language detectors compared on the shared real pages: accuracy and documents/s, one core.

    .venv/bin/python -m benchmarks.langid [--rounds 3] [--data ../shared/data]

Pages, extracted once with ``pipeline.extract.extract_document`` before timing:
- pydocs: the 317 pages of the Python library reference crawl, all English, many code-heavy;
- handbook: the Debian handbook's French and German pages (``/fr-FR/``, ``/de-DE/``). The
  translation is incomplete, so some pages are (mostly) the English original: a page counts as
  French/German when a second detector, py3langid read paragraph by paragraph, reads at least
  half of its paragraph text as fr/de (``pipeline.langid.text_share``; fastText, the same way,
  agrees on all but one page);
- trafilatura: the trafilatura test pages (many German), labelled by their ``<html lang>``;
- articles: the article-extraction benchmark (mostly English news).

Each detector runs as the pipeline runs it: ``pipeline.langid.detect(texts, name, ["en"], min_score)``,
the character-weighted vote over ~800-character chunks (at most 8), whose score is the share of
the text read as the winning language; a page is kept when that is English with a share of at
least ``--min-score`` (the default config's). Reported per detector: Python pages kept, French/
German handbook pages dropped, trafilatura pages whose label equals their ``<html lang>``, article
pages kept, the lowest English share among the Python pages and the highest among the French/
German pages (the margin either side of the threshold), and documents/s (CPU time of this
process over every page, best of ``--rounds``), and the range of thresholds, if any, that keeps
every Python page and drops every French/German one. Then the threshold sweep of the default detector,
and fastText as OBELICS runs it (one prediction on the whole lower-cased text, P(en) >= 0.8).
"""
from __future__ import annotations

import argparse
import gzip
import os
import platform
import re
from pathlib import Path

from benchmarks.filters import _time
from pipeline import langid
from pipeline.config import Config
from pipeline.extract import ExtractionError, extract_document
from pipeline.records import Page
from pipeline.warc import iter_warc
from schemas.document import Provenance

_HTML_LANG = re.compile(r"<html[^>]*\blang\s*=\s*[\"']?([A-Za-z]{2,3})", re.I)


def _extract(page: Page) -> list[str] | None:
    try:
        return [t for t in extract_document(page).texts if t]
    except ExtractionError:
        return None  # pages without text are not filter input


def load_pages(data: Path) -> dict[str, list[tuple[str, list[str], str | None]]]:
    """Per source: (url, text nodes, expected language or None)."""
    out: dict[str, list[tuple[str, list[str], str | None]]] = {}
    crawls = data / "warc" / "local_wget_crawls"
    for source, name in (("pydocs", "pydocs.warc.gz"), ("handbook", "handbook-fr-de.warc.gz")):
        rows = []
        for rec in iter_warc(str(crawls / name)):
            if isinstance(rec, Page) and (source == "pydocs" or "/fr-FR/" in rec.url or "/de-DE/" in rec.url):
                texts = _extract(rec)
                if texts:
                    rows.append((rec.url, texts, "en" if source == "pydocs" else None))
        out[source] = rows
    rows = []
    for path in sorted((data / "extraction" / "trafilatura" / "cache").glob("*.htm*")):
        html = path.read_bytes().decode("utf-8", "replace")
        m = _HTML_LANG.search(html[:5000])
        texts = _extract(Page(f"https://bench.example/{path.name}", Provenance(str(path), 0, len(html), ""), html))
        if texts:
            rows.append((path.name, texts, m.group(1).lower() if m else None))
    out["trafilatura"] = rows
    rows = []
    for path in sorted((data / "extraction" / "article_benchmark" / "html").glob("*.html.gz")):
        html = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        texts = _extract(Page(f"https://bench.example/{path.name}", Provenance(str(path), 0, len(html), ""), html))
        if texts:
            rows.append((path.name, texts, None))
    out["articles"] = rows
    return out


def _en_share(result: tuple[str, float]) -> float:
    return result[1] if result[0] == "en" else 0.0


def obelics_fasttext(texts: list[str]) -> tuple[str, float]:
    """OBELICS's document-level language ID: fastText on the whole text, lower-cased, newlines as
    spaces; the top label and its probability (``language.score: probability``)."""
    return langid.detect(texts, "fasttext", score="probability")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--min-score", type=float, default=Config().language.min_score)
    args = ap.parse_args(argv)

    pages = load_pages(Path(args.data))
    handbook = pages["handbook"]
    foreign = {u for u, texts, _ in handbook if langid.text_share(texts, ("fr", "de"), "py3langid") >= 0.5}
    by_fasttext = {u for u, texts, _ in handbook if langid.text_share(texts, ("fr", "de"), "fasttext") >= 0.5}
    everything = [p for rows in pages.values() for p in rows]
    labelled = [p for p in pages["trafilatura"] if p[2]]
    print(
        f"{len(pages['pydocs'])} Python docs pages, {len(handbook)} French/German handbook pages "
        f"({len(foreign)} mostly French/German to py3langid, {len(by_fasttext)} to fastText, "
        f"{len(foreign & by_fasttext)} to both), {len(pages['trafilatura'])} trafilatura pages "
        f"({len(labelled)} with <html lang>), {len(pages['articles'])} article pages; "
        f"{len(everything)} in all, {sum(len(''.join(p[1])) for p in everything) / len(everything):,.0f} characters each"
    )
    print(
        f"python {platform.python_version()}, {platform.processor() or platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f}, best of {args.rounds}, min_score {args.min_score}"
    )
    print()
    print(
        "| detector | Python docs kept | fr/de handbook pages dropped | trafilatura = `<html lang>` | "
        "articles kept | lowest en share, Python docs | highest en share, fr/de pages | "
        "min_score keeping all Python docs, dropping all fr/de | documents/s (one core) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    results: dict[str, dict[str, tuple[str, float]]] = {}
    ms = args.min_score
    for name in langid.DETECTORS:
        langid.load(name)
        res = {p[0]: langid.detect(p[1], name, ["en"], ms) for p in everything}
        # Without min_score a combination's second opinion reads every chunk it is asked about:
        # the full shares, for the margins (verdicts at min_score are the same either way).
        full = {p[0]: langid.detect(p[1], name, ["en"]) for p in everything}
        assert all((_en_share(res[u]) >= ms) == (_en_share(full[u]) >= ms) for u in res)
        results[name] = full
        secs = _time(lambda p: langid.detect(p[1], name, ["en"], ms), everything, args.rounds)
        _row(name, res, full, pages, foreign, labelled, ms, len(everything) / secs)

    default = Config().language.detector
    print()
    print(f"`{default}` (the default) by threshold:")
    print()
    print("| min_score | Python docs kept | fr/de handbook pages dropped | articles kept |")
    print("| ---: | ---: | ---: | ---: |")
    res = results[default]  # full shares: the verdict at any threshold
    for thr in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9):
        kept = sum(_en_share(res[u]) >= thr for u, _, _ in pages["pydocs"])
        dropped = sum(_en_share(res[u]) < thr for u in foreign)
        arts = sum(_en_share(res[u]) >= thr for u, _, _ in pages["articles"])
        print(f"| {thr} | {kept}/{len(pages['pydocs'])} | {dropped}/{len(foreign)} | {arts}/{len(pages['articles'])} |")

    print()
    print("fastText as OBELICS runs it (whole text, lower-cased, one prediction; score = P(en)):")
    print()
    res = {p[0]: obelics_fasttext(p[1]) for p in everything}
    secs = _time(lambda p: obelics_fasttext(p[1]), everything, args.rounds)
    print("| P(en) at least | Python docs kept | fr/de handbook pages dropped | articles kept | documents/s |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for thr in (0.5, 0.8):
        kept = sum(_en_share(res[u]) >= thr for u, _, _ in pages["pydocs"])
        dropped = sum(_en_share(res[u]) < thr for u in foreign)
        arts = sum(_en_share(res[u]) >= thr for u, _, _ in pages["articles"])
        print(
            f"| {thr} | {kept}/{len(pages['pydocs'])} | {dropped}/{len(foreign)} | {arts}/{len(pages['articles'])} | "
            f"{len(everything) / secs:,.0f} |"
        )
    misread = [(u.rsplit("/", 1)[-1], *results["resiliparse"][u]) for u, _, _ in pages["pydocs"] if results["resiliparse"][u][0] != "en"]
    print()
    print("Python docs pages resiliparse alone labels otherwise:", ", ".join(f"{u} {lg} {s:.2f}" for u, lg, s in misread))


def _row(name, res, full, pages, foreign, labelled, min_score, docs_per_s) -> None:
    pydocs, articles = pages["pydocs"], pages["articles"]
    kept = sum(_en_share(res[u]) >= min_score for u, _, _ in pydocs)
    dropped = sum(_en_share(res[u]) < min_score for u in foreign)
    agree = sum(res[u][0] == lang for u, _, lang in labelled)
    arts = sum(_en_share(res[u]) >= min_score for u, _, _ in articles)
    low = min(_en_share(full[u]) for u, _, _ in pydocs)
    high = max(_en_share(full[u]) for u in foreign)
    separates = f"{high:.2f}-{low:.2f}" if low > high else "none"
    print(
        f"| {name} | {kept}/{len(pydocs)} | {dropped}/{len(foreign)} | {agree}/{len(labelled)} | "
        f"{arts}/{len(articles)} | {low:.2f} | {high:.2f} | {separates} | {docs_per_s:,.0f} |"
    )


if __name__ == "__main__":
    main()
