"""``build-m3w explain``: every text filter's measured value, threshold and verdict, node by node
and for the document — the tool for tuning ``text_filters`` and ``language`` in the config.

    build-m3w explain --input crawl.warc.gz --url https://example.org/page
    build-m3w explain --input page.html --url https://example.org/page --config my.yaml
    build-m3w explain --input crawl.warc.gz --url https://example.org/page --preset obelics
    build-m3w explain --input docs.jsonl --json        # lines from `build-m3w extract`

Unlike the pipeline, which stops at the first failing check, explain measures everything, so a
user sees how far each value is from its threshold, and where each threshold came from (the
preset, or the ``--config`` file that overrode it). The verdict is the pipeline's: the same checks
in the same order as ``pipeline.filters.filter_document``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
from typing import Any, Iterator

from pipeline import filters as F
from pipeline.config import Config, ConfigError, ResolvedConfig, resolve_config
from pipeline.perplexity import PerplexityError
from schemas.document import Document, ImageNode, Provenance, TextNode, from_json

USAGE = "build-m3w explain --input WARC_OR_HTML_OR_JSONL [--url URL] [--preset NAME] [--config FILE] [--json]"


class ExplainError(Exception):
    """A user mistake; the message is one line saying what to fix."""


def _config_key(check_name: str) -> str:
    """The config key behind a check: ``gopher_top_3gram_char_frac`` -> ``text_filters.gopher_top_ngram_char_frac``."""
    return "text_filters." + re.sub(r"^gopher_(top|dup)_\d+gram_char_frac$", r"gopher_\1_ngram_char_frac", check_name)


def _measure(checks: list[F.Check], text: str, sources: dict[str, str]) -> list[dict[str, Any]]:
    stats = F.TextStats(text)
    out = []
    for c in checks:
        v = c.measure(stats)
        source = sources.get(_config_key(c.name), "default")
        out.append({"filter": c.name, "value": v, "bound": c.bound, "threshold": c.threshold, "pass": c.passes(v), "source": source})
    return out


def explain_document(doc: Document, cfg: Config, resolved: ResolvedConfig | None = None) -> dict[str, Any]:
    """Every measure of ``doc`` against ``cfg``: a JSON-ready dict with ``verdict`` ("kept" or
    "dropped"), ``reason`` (the first failing filter, as in ``filter_document``), ``url``,
    ``language``, ``nodes`` (per node: its checks and verdict) and ``document`` (checks on the text
    left after node filtering), and ``images`` (the image-count rule, applied after images are
    resolved). Each check names the ``source`` of its threshold: ``preset NAME``, the override
    file's path, or ``default``; ``config`` names the preset and the file."""
    tf = cfg.text_filters
    sources = resolved.sources if resolved is not None else {}
    reason: str | None = None
    detail = ""

    blocked = F.url_block_reason(doc.url, tf)
    url_info = {
        "domain_blocklist": tf.url_domain_blocklist_file,
        "substring_blocklist": tf.url_substring_blocklist_file,
        "blocked": blocked[1] if blocked else None,
        "pass": blocked is None,
    }
    if blocked:
        reason, detail = blocked

    lang, score = F.identify([t for t in doc.texts if t], cfg.language)
    lang_reason = F.language_reason(lang, score, cfg.language)
    language = {
        "detected": lang,
        "score": round(score, 4),
        "keep": cfg.language.keep,
        "min_score": cfg.language.min_score,
        "detector": cfg.language.detector,
        "source": {k: sources.get(f"language.{k}", "default") for k in ("keep", "min_score", "detector")},
        "pass": lang_reason is None,
    }
    if reason is None and lang_reason:
        reason, detail = lang_reason, f"{lang or 'none'} {score:.3f}"

    node_checks = F.node_checks(tf)
    nodes, kept_texts = [], []
    for i, node in enumerate(doc.nodes):
        if isinstance(node, ImageNode):
            nodes.append({"index": i, "type": "image", "url": node.url, "verdict": "kept"})
            continue
        checks = _measure(node_checks, node.text, sources)
        if cfg.language.node_min_chars is not None:  # paragraph language ID comes first
            got = F.node_language(node.text, cfg.language)
            fails = got is not None and F.language_reason(got[0], got[1], cfg.language) is not None
            checks.insert(0, {"filter": F.NODE_LANGUAGE, "value": got and got[1], "language": got and got[0],
                              "bound": "min", "threshold": cfg.language.min_score, "pass": not fails,
                              "source": sources.get("language.node_min_chars", "default")})
        failed = next((c for c in checks if not c["pass"]), None)
        nodes.append(
            {
                "index": i,
                "type": "text",
                "text": node.text,
                "checks": checks,
                "verdict": "dropped" if failed else "kept",
                "reason": failed["filter"] if failed else None,
            }
        )
        if not failed:
            kept_texts.append(node.text)

    doc_checks = _measure(F.doc_checks(tf), "\n\n".join(kept_texts), sources)
    failed = next((c for c in doc_checks if not c["pass"]), None)
    if reason is None and failed:
        reason = failed["filter"]
        check = next(c for c in F.doc_checks(tf) if c.name == reason)
        detail = F.detail(check, failed["value"])

    perplexity = _perplexity(doc, nodes, tf, sources)
    if reason is None and perplexity["pass"] is False:
        reason, detail = "doc_max_perplexity", f"{perplexity['value']:.1f} (max {_v(tf.doc_max_perplexity)})"

    n_images = len(doc.images)
    return {
        "url": doc.url,
        "doc_id": doc.doc_id,
        "verdict": "dropped" if reason else "kept",
        "reason": reason,
        "config": {"preset": cfg.preset, "file": resolved.file if resolved is not None else None},
        "detail": detail,
        "url_blocklists": url_info,
        "language": language,
        "nodes": nodes,
        "document": {"checks": doc_checks, "perplexity": perplexity},
        "images": {
            "count": n_images,
            "min": tf.doc_min_images,
            "max": tf.doc_max_images,
            "reason": F.image_count_reason(doc, cfg),
            "source": ", ".join(sorted({sources.get(f"text_filters.doc_{b}_images", "default") for b in ("min", "max")})),
            "note": "applied after images are resolved, not by the text filter stage",
        },
    }


def _perplexity(doc: Document, nodes: list[dict[str, Any]], tf: Any, sources: dict[str, str]) -> dict[str, Any]:
    """The KenLM check on the kept text, or why it is off."""
    out: dict[str, Any] = {
        "value": None,
        "threshold": tf.doc_max_perplexity,
        "model": tf.perplexity_model,
        "pass": None,
        "source": sources.get("text_filters.doc_max_perplexity", "default"),
    }
    if tf.doc_max_perplexity is None:
        out["note"] = "off (text_filters.doc_max_perplexity is null)"
    elif tf.perplexity_model is None:
        out["note"] = "off: no text_filters.perplexity_model (a local KenLM model file)"
    else:
        from pipeline import perplexity as P

        kept = "\n\n".join(n["text"] for n in nodes if n["type"] == "text" and n["verdict"] == "kept")
        out["value"] = P.perplexity(P.load(tf.perplexity_model), kept)
        out["pass"] = out["value"] <= tf.doc_max_perplexity
    return out


# ---------------------------------------------------------------------------------------------
# Text rendering

# Short column heads for the node table; the legend maps them back to config keys.
_NODE_HEADS = {
    "node_min_words": "words>=",
    "node_max_words": "words<=",
    "node_max_special_char_ratio": "special",
    "node_min_stopword_ratio": "stopw",
    "node_max_flagged_word_ratio": "flagged",
    "node_max_char_10gram_repetition": "char10",
    "node_max_word_5gram_repetition": "word5",
}


def _v(x: Any) -> str:
    if x is None:
        return "off"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _preview(text: str, n: int = 60) -> str:
    s = " ".join(text.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def render(report: dict[str, Any]) -> str:
    """The report as readable text: header, language, node table, document table."""
    out = []
    verdict = report["verdict"].upper()
    out.append(f"{report['url']}  (doc {report['doc_id']})")
    why = f" by {report['reason']}: {report['detail']}" if report["reason"] else ""
    out.append(f"verdict: {verdict}{why}")
    conf = report.get("config") or {}
    if conf.get("preset"):
        over = f", overridden by {conf['file']}" if conf.get("file") else ""
        out.append(f"config: preset {conf['preset']}{over}  (the \"from\" of each threshold below)")
    lg = report["language"]
    keep = ",".join(lg["keep"]) if lg["keep"] is not None else "any"
    lang_from = ", ".join(sorted(set(lg.get("source", {}).values()))) or "default"
    out.append(
        f"language: {lg['detected'] or 'none'} {lg['score']:.3f} of text  "
        f"(keep {keep}, min_score {_v(lg['min_score'])}, {lg['detector']}; from {lang_from})  {'pass' if lg['pass'] else 'FAIL'}"
    )
    ub = report["url_blocklists"]
    if ub["domain_blocklist"] or ub["substring_blocklist"]:
        out.append(f"url blocklists: {'pass' if ub['pass'] else 'FAIL: ' + str(ub['blocked'])}")

    out.append("")
    out.append("nodes (value; ! = fails its threshold):")
    text_nodes = [n for n in report["nodes"] if n["type"] == "text"]
    names = [c["filter"] for c in text_nodes[0]["checks"]] if text_nodes else []
    heads = [_NODE_HEADS.get(n, n) for n in names]
    rows = [["#", *heads, "verdict", "text"]]
    for n in report["nodes"]:
        if n["type"] == "image":
            rows.append([str(n["index"]), *["" for _ in heads], "image", _preview(n["url"])])
            continue
        cells = [_v(c["value"]) + ("" if c["pass"] else "!") for c in n["checks"]]
        rows.append([str(n["index"]), *cells, "kept" if n["verdict"] == "kept" else "DROP", _preview(n["text"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    if names:
        thresholds = {c["filter"]: c for c in text_nodes[0]["checks"]}
        legend = ", ".join(
            f"{_NODE_HEADS.get(n, n)} = {n} ({thresholds[n]['bound']} {_v(thresholds[n]['threshold'])}, "
            f"from {thresholds[n].get('source', 'default')})"
            for n in names
        )
        out.append("  " + legend)

    out.append("")
    out.append("document (text left after node filters):")
    rows = [["filter", "value", "threshold", "verdict", "from"]]
    for c in report["document"]["checks"]:
        verdict = "pass" if c["pass"] else "FAIL"
        rows.append([c["filter"], _v(c["value"]), f"{c['bound']} {_v(c['threshold'])}", verdict, c.get("source", "default")])
    im = report["images"]
    rows.append(
        ["doc_min/max_images", str(im["count"]), f"{_v(im['min'])}-{_v(im['max'])}", "FAIL" if im["reason"] else "pass", im.get("source", "default")]
    )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    pp = report["document"].get("perplexity")
    if pp and pp.get("threshold") is not None:
        if pp["value"] is None:
            out.append(f"  perplexity: {pp['note']}  (max {_v(pp['threshold'])}, from {pp['source']})")
        else:
            verdict = "pass" if pp["pass"] else "FAIL"
            out.append(f"  perplexity: {pp['value']:.1f}  max {_v(pp['threshold'])}  {verdict}  (from {pp['source']}; {pp['model']})")
    out.append("  (image count is checked after images are resolved)")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Inputs


def _open_text(path: str) -> str:
    raw = open(path, "rb").read()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", "replace")


def _same_url(a: str, b: str) -> bool:
    return a == b or a.rstrip("/") == b.rstrip("/")


def iter_documents(path: str, url: str | None, cfg: Config) -> Iterator[Document]:
    """Documents from a WARC/ARC (extracted as the pipeline does), an HTML file, or JSON lines of
    ``build-m3w extract``; only those at ``url`` when given."""
    if not os.path.exists(path):
        raise ExplainError(f"input {path!r} not found; pass an existing WARC, HTML or JSONL file")
    base = path[:-3] if path.endswith(".gz") else path
    if base.endswith((".jsonl", ".json")):
        for n, line in enumerate(_open_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = from_json(json.loads(line))
            except (ValueError, TypeError, KeyError) as e:
                raise ExplainError(f"{path} line {n} is not an m3w document ({e}); pass `build-m3w extract` output")
            if url is None or _same_url(doc.url, url):
                yield doc
        return

    from pipeline.extract import ExtractionError
    from pipeline.extract_guard import GuardedExtractor
    from pipeline.records import Page

    if base.endswith((".html", ".htm")):
        html = _open_text(path)
        page_url = url or "file://" + os.path.abspath(path)
        pages: Iterator[Page] = iter([Page(page_url, Provenance(path, 0, os.path.getsize(path), ""), html)])
    else:
        from pipeline.warc import iter_warc

        pages = (
            r for r in iter_warc(path, cfg.limits) if isinstance(r, Page) and (url is None or _same_url(r.url, url))
        )
    # Same hard time limit as the build (a page that stalls the parser costs parse_timeout_s).
    extractor = GuardedExtractor(cfg.extract, cfg.limits, fork=True)
    for page in pages:
        try:
            yield extractor.extract(page)
        except ExtractionError as e:
            if url is not None:
                raise ExplainError(f"{page.url}: extraction dropped the page ({e}); nothing to filter")


def main(argv: list[str]) -> int:
    """``build-m3w explain``; returns the exit status (2 on a user error, with a one-line message)."""
    ap = argparse.ArgumentParser(
        prog="build-m3w explain",
        description="Every text filter's measured value, threshold and verdict, node by node and for the document.",
        usage=USAGE,
    )
    ap.add_argument("--input", required=True, help="WARC/ARC (.gz), HTML (.gz) or JSONL from build-m3w extract")
    ap.add_argument("--url", help="the page to explain (default: every page in the input)")
    ap.add_argument("--preset", help="corpus recipe: m3w (default), obelics, mmc4 (`build-m3w presets`)")
    ap.add_argument("--config", help="YAML file whose keys override the preset's")
    ap.add_argument("--json", action="store_true", help="one JSON object per document instead of tables")
    args = ap.parse_args(argv)
    try:
        resolved = resolve_config(args.config, args.preset)
        cfg = resolved.config
        found = 0
        for doc in iter_documents(args.input, args.url, cfg):
            report = explain_document(doc, cfg, resolved)
            if args.json:
                sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
            else:
                sys.stdout.write(("\n" if found else "") + render(report) + "\n")
            found += 1
        if not found:
            where = f" with URL {args.url}" if args.url else ""
            raise ExplainError(f"no document{where} in {args.input}; check the URL (as in WARC-Target-URI)")
    except (ConfigError, ExplainError, PerplexityError) as e:
        print(f"build-m3w explain: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
