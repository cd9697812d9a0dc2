"""Extraction quality and speed of pipeline.extract against trafilatura, on human ground truth.

    .venv/bin/python -m benchmarks.extraction [--data ../shared/data/extraction] [--no-anchor] [--worst N] [--repeat N]

Sets (../shared/data/extraction, see its README):
- article_benchmark: text F1, bag of lowercased ``\\w+`` tokens vs ``articleBody``;
- readability: text F1 vs the text of ``expected.html``; content-image precision/recall/F1 vs the
  ``<img>`` URLs of ``expected.html`` resolved against ``http://fakehost/test/page.html``;
- trafilatura/cache + evaldata.json: share of ``with`` snippets found, ``without`` snippets avoided;
- pages/s over all pages of the three sets, both extractors in the same process, page by page
  in turn (wall clock and CPU time).

Scores are macro averages over pages; image scores over pages where either side has an image.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import statistics
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urljoin

from selectolax.lexbor import LexborHTMLParser

from pipeline.config import ExtractConfig, LimitsConfig
from pipeline.extract import ExtractionError, extract_nodes, parse_srcset
from pipeline.urls import normalize_url
from schemas.document import ImageNode, TextNode

READABILITY_BASE = "http://fakehost/test/page.html"
WARMUP_PAGES = 10
_TOKEN = re.compile(r"\w+")
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)[^)]*\)")


def decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def load_sets(root: Path) -> dict[str, list[dict]]:
    """{set name: [{id, html, url, ...ground truth}]}."""
    sets: dict[str, list[dict]] = {}
    gt = json.loads((root / "article_benchmark" / "ground-truth.json").read_text())
    sets["article"] = [
        {
            "id": key,
            "html": decode(gzip.open(root / "article_benchmark" / "html" / f"{key}.html.gz").read()),
            "url": v.get("url") or "http://example.com/",
            "gold_text": v["articleBody"],
        }
        for key, v in sorted(gt.items())
    ]
    rows = []
    for case in sorted((root / "readability").iterdir()):
        if not (case / "source.html").exists():
            continue
        expected = LexborHTMLParser(decode((case / "expected.html").read_bytes()))
        imgs = []
        for img in expected.css("img"):
            # An image counts as found when any of its URLs is extracted: src or a srcset candidate.
            a = img.attributes
            urls = [(a.get("src") or "").strip()] + [c[0] for c in parse_srcset(a.get("srcset") or "")]
            urls = {normalize_url(urljoin(READABILITY_BASE, u)) for u in urls if u and not u.startswith("data:")}
            if urls:
                imgs.append(urls)
        rows.append(
            {
                "id": case.name,
                "html": decode((case / "source.html").read_bytes()),
                "url": READABILITY_BASE,
                "gold_text": (expected.body or expected.root).text(separator=" "),
                "gold_images": imgs,
            }
        )
    sets["readability"] = rows
    ev = json.loads((root / "trafilatura" / "evaldata.json").read_text())
    rows = []
    for url, v in sorted(ev.items()):
        f = root / "trafilatura" / "cache" / v["file"]
        if f.exists():
            rows.append({"id": v["file"], "html": decode(f.read_bytes()), "url": url, "with": v["with"], "without": v["without"]})
    sets["snippets"] = rows
    return sets


# ---------------------------------------------------------------------------------------------
# Extractors: (html, url) -> (text, [absolute image URLs])


def ours(cfg: ExtractConfig, limits: LimitsConfig):
    def run(html: str, url: str) -> tuple[str, list[str]]:
        try:
            nodes, _ = extract_nodes(html, url, cfg, limits)
        except ExtractionError:
            return "", []
        text = "\n\n".join(n.text for n in nodes if isinstance(n, TextNode))
        return text, [n.url for n in nodes if isinstance(n, ImageNode)]

    return run


def ours_guarded(cfg: ExtractConfig, limits: LimitsConfig):
    """``ours`` through the watchdog (``GuardedExtractor``: the page goes to the extraction process
    and its nodes come back), as ``ExtractDocuments`` and ``build-m3w extract`` run it."""
    from pipeline.extract_guard import GuardedExtractor

    ex = GuardedExtractor(cfg, limits)
    tick = os.sysconf("SC_CLK_TCK")

    def run(html: str, url: str) -> tuple[str, list[str]]:
        try:
            nodes, _ = ex.extract_nodes(html, url)
        except ExtractionError:
            return "", []
        text = "\n\n".join(n.text for n in nodes if isinstance(n, TextNode))
        return text, [n.url for n in nodes if isinstance(n, ImageNode)]

    def child_cpu() -> float:
        """CPU seconds of the extraction process so far (user + system)."""
        with open(f"/proc/{ex.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    run.child_cpu = child_cpu
    return run


def trafilatura_extractor():
    import trafilatura

    def run(html: str, url: str) -> tuple[str, list[str]]:
        out = trafilatura.extract(html, url=url, include_images=True) or ""
        images = [urljoin(url, m.group(2)) for m in _MD_IMAGE.finditer(out)]
        return _MD_IMAGE.sub(" ", out), images

    return run


# ---------------------------------------------------------------------------------------------
# Scores


def text_f1(pred: str, gold: str) -> float:
    p = Counter(_TOKEN.findall(pred.lower()))
    g = Counter(_TOKEN.findall(gold.lower()))
    if not p and not g:
        return 1.0
    overlap = sum((p & g).values())
    if overlap == 0:
        return 0.0
    prec = overlap / sum(p.values())
    rec = overlap / sum(g.values())
    return 2 * prec * rec / (prec + rec)


def image_prf(pred: list[str], gold: list[set[str]]) -> tuple[float, float, float] | None:
    """Precision over distinct extracted URLs, recall over expected images (each a set of URLs)."""
    p = {normalize_url(u) for u in pred}
    if not p and not gold:
        return None
    every = set().union(*gold) if gold else set()
    prec = len(p & every) / len(p) if p else 0.0
    rec = sum(1 for g in gold if g & p) / len(gold) if gold else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec and rec else 0.0
    return prec, rec, f1


def _norm_ws(s: str) -> str:
    return " ".join(s.split())


def run_interleaved(extractors: dict, sets: dict[str, list[dict]]) -> tuple[dict, dict]:
    """Every page through every extractor back to back, timing each call.

    Interleaving page by page means a load spike on a shared machine hits all extractors alike,
    so the speed ratio holds even when absolute times swing. Returns ({name: {set: outputs}},
    {name: (wall seconds, CPU seconds, pages)}).
    """
    for run in extractors.values():
        for r in sets["article"][:WARMUP_PAGES]:  # imports, lazy tables and caches
            run(r["html"], r["url"])
    outputs = {name: {s: [] for s in sets} for name in extractors}
    times = {name: [0.0, 0.0, 0] for name in extractors}
    # A child process's CPU time (the watchdog's extraction process) is read around the whole
    # run: it works only while its parent waits in a timed call.
    child0 = {name: run.child_cpu() for name, run in extractors.items() if hasattr(run, "child_cpu")}
    for set_name, rows in sets.items():
        for r in rows:
            for name, run in extractors.items():
                t0, c0 = time.perf_counter(), time.process_time()
                out = run(r["html"], r["url"])
                c1, t1 = time.process_time(), time.perf_counter()
                outputs[name][set_name].append(out)
                tm = times[name]
                tm[0] += t1 - t0
                tm[1] += c1 - c0
                tm[2] += 1
    for name, c0 in child0.items():
        times[name][1] += extractors[name].child_cpu() - c0
    return outputs, {k: tuple(v) for k, v in times.items()}


def evaluate(name: str, outputs: dict, timing: tuple, sets: dict[str, list[dict]], worst: int = 0) -> dict:
    res: dict = {"extractor": name}
    seconds, cpu_seconds, n = timing
    res["pages"] = n
    res["seconds"] = seconds
    res["cpu_seconds"] = cpu_seconds
    res["pages_per_s"] = n / seconds
    res["pages_per_cpu_s"] = n / cpu_seconds

    art = [(text_f1(o[0], r["gold_text"]), r["id"]) for o, r in zip(outputs["article"], sets["article"])]
    res["article_text_f1"] = sum(f for f, _ in art) / len(art)
    rd = sets["readability"]
    rdf = [(text_f1(o[0], r["gold_text"]), r["id"]) for o, r in zip(outputs["readability"], rd)]
    res["readability_text_f1"] = sum(f for f, _ in rdf) / len(rdf)
    prf = [(image_prf(o[1], r["gold_images"]), r["id"]) for o, r in zip(outputs["readability"], rd)]
    prf = [(x, i) for x, i in prf if x is not None]
    for k, key in enumerate(("image_precision", "image_recall", "image_f1")):
        res[f"readability_{key}"] = sum(x[k] for x, _ in prf) / len(prf)
    found = total_with = avoided = total_without = 0
    for o, r in zip(outputs["snippets"], sets["snippets"]):
        text = _norm_ws(o[0])
        for s in r["with"]:
            total_with += 1
            found += _norm_ws(s) in text
        for s in r["without"]:
            total_without += 1
            avoided += _norm_ws(s) not in text
    res["snippets_with_found"] = found / total_with
    res["snippets_without_avoided"] = avoided / total_without
    if worst:
        res["worst_article"] = sorted(art)[:worst]
        res["worst_readability"] = sorted(rdf)[:worst]
        res["worst_images"] = sorted(((x[2], i) for x, i in prf))[:worst]
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "extraction"))
    ap.add_argument("--no-anchor", action="store_true", help="skip trafilatura (quick quality check of ours)")
    ap.add_argument("--worst", type=int, default=0, help="list the N worst pages per score")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument(
        "--repeat", type=int, default=1, help="time N interleaved runs; report the median and range of the ratio"
    )
    ap.add_argument(
        "--watchdog", action="store_true", help="also time extraction through the watchdog's extraction process"
    )
    args = ap.parse_args(argv)
    sets = load_sets(Path(args.data))
    extractors = {"m3w": ours(ExtractConfig(), LimitsConfig())}
    if args.watchdog:
        extractors["m3w watchdog"] = ours_guarded(ExtractConfig(), LimitsConfig())
    if not args.no_anchor:
        extractors["trafilatura 2.3.1 (include_images)"] = trafilatura_extractor()
    runs = [run_interleaved(extractors, sets) for _ in range(max(1, args.repeat))]
    outputs, times = runs[0]
    results = [evaluate(name, outputs[name], times[name], sets, args.worst) for name in extractors]
    keys = [k for k in results[0] if k not in ("extractor",) and not k.startswith("worst")]
    print("| metric | " + " | ".join(r["extractor"] for r in results) + " |")
    print("| --- |" + " --- |" * len(results))
    for k in keys:
        vals = [r[k] for r in results]
        print(f"| {k} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in vals) + " |")
    by_name = {r["extractor"]: r for r in results}
    anchor_name = next((n for n in extractors if n.startswith("trafilatura")), None)
    if anchor_name:
        a, b = by_name["m3w"], by_name[anchor_name]
        print(f"\nspeed ratio m3w / trafilatura: {a['pages_per_s'] / b['pages_per_s']:.1f}x wall clock, "
              f"{a['pages_per_cpu_s'] / b['pages_per_cpu_s']:.1f}x CPU time")
    if anchor_name and len(runs) > 1:
        for label, col in (("CPU time", 1), ("wall clock", 0)):
            ratios = sorted(t[anchor_name][col] / t["m3w"][col] for _, t in runs)
            ours_pps = sorted(t["m3w"][2] / t["m3w"][col] for _, t in runs)
            anchor_pps = sorted(t[anchor_name][2] / t[anchor_name][col] for _, t in runs)
            print(
                f"{label}, {len(runs)} runs: ratio median {statistics.median(ratios):.1f}x "
                f"(range {ratios[0]:.1f}-{ratios[-1]:.1f}x); m3w median {statistics.median(ours_pps):.0f} pages/s "
                f"({ours_pps[0]:.0f}-{ours_pps[-1]:.0f}), trafilatura median {statistics.median(anchor_pps):.1f} "
                f"({anchor_pps[0]:.1f}-{anchor_pps[-1]:.1f})"
            )
    if "m3w watchdog" in extractors:
        same = all(outputs["m3w watchdog"][k] == outputs["m3w"][k] for k in sets)
        print(f"\nwatchdog outputs identical to in-process: {same}")
        for label, col in (("CPU time (parent + extraction process)", 1), ("wall clock", 0)):
            ratios = sorted(t["m3w"][col] / t["m3w watchdog"][col] for _, t in runs)
            pps = sorted(t["m3w watchdog"][2] / t["m3w watchdog"][col] for _, t in runs)
            print(
                f"watchdog / in-process speed, {label}, {len(runs)} runs: median {statistics.median(ratios):.3f} "
                f"(range {ratios[0]:.3f}-{ratios[-1]:.3f}); watchdog median {statistics.median(pps):.0f} pages/s"
            )
    for r in results:
        for k in r:
            if k.startswith("worst"):
                print(r["extractor"], k, [(round(f, 3), i) for f, i in r[k]])
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items()} for r in results], indent=1, default=str))


if __name__ == "__main__":
    main()
