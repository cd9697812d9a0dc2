"""Time and whole-process-tree peak memory of extracting one hostile page, per markup class.

    .venv/bin/python -m benchmarks.hostile [--only NAME ...] [--timeout S] [--baseline S]

Each input is generated here and extracted in a fresh process through ``GuardedExtractor`` (the
path of ``ExtractDocuments`` and ``build-m3w extract``) with the config's limits; the table gives
the outcome (document or reject reason), the wall time of that one page, and the peak resident
memory of that process plus its extraction child (the sum of both peaks: an upper bound of the
tree's peak). ``--baseline S`` also times lexbor's bare parse of each input in a child killed
after S seconds, for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _attrs(n: int, eq: str = "") -> str:
    return " ".join(f"a{i}{eq}" for i in range(n))


# name → (what it is, generator). Sizes stay under limits.max_html_bytes (5 MB).
INPUTS = {
    "unclosed-a": ("'<a ' × 90,000 (the screen's old regex: 244 s)", lambda: "<a " * 90_000),
    "unclosed-a-text": ("'<a ' × 21,000 + 256 KB of text", lambda: "<a " * 21_000 + "x" * 256_000),
    "unmatched-end-tags": ("'<div></i>' × 200,000 (1.8 MB; lexbor: 105 s)", lambda: "<div></i>" * 200_000),
    "attributes-no-equals": ("one tag, 200,000 attributes without '='", lambda: "<p " + _attrs(200_000) + ">x"),
    "attributes-equals": ("one tag, 1,000,000 'a=1' attributes", lambda: "<p " + "a=1 " * 1_000_000 + ">x"),
    "nested-divs": ("100,000 nested <div>", lambda: "<div>" * 100_000 + "x" + "</div>" * 100_000),
    "self-closing-divs": ("'<div/>' × 200,000 (nests: '/>' does not close a div)", lambda: "<div/>" * 200_000),
    "quoted-gt-attributes": (
        "'>' in a quoted value, then 100,000 attributes",
        lambda: '<p a=">" ' + _attrs(100_000) + ">x",
    ),
    "spread-attributes": (
        "300 tags × 2,000 attributes (passes the screen; lexbor alone ~5 s)",
        lambda: "<html><body>" + ("<p " + _attrs(2000, "=1") + ">x</p>") * 300 + "</body></html>",
    ),
    "many-elements": ("'<i>x</i>' × 600,000 (4.8 MB of shallow markup)", lambda: "<i>x</i>" * 600_000),
    "long-list": ("<li> × 200,000 in one list", lambda: "<ul>" + "<li>item of a list " * 200_000 + "</ul>"),
}


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def run_one(name: str, timeout_s: float | None) -> dict:
    """Extract INPUTS[name] in this process (called in a fresh one by ``main``)."""
    from pipeline.config import load_config
    from pipeline.extract import ExtractionError
    from pipeline.extract_guard import GuardedExtractor
    from pipeline.records import Page
    from schemas.document import Provenance

    cfg = load_config()
    if timeout_s is not None:
        cfg.limits.parse_timeout_s = timeout_s
    html = INPUTS[name][1]()
    page = Page("http://hostile.example/", Provenance("hostile.warc.gz", 0, len(html), ""), html)
    ex = GuardedExtractor(cfg.extract, cfg.limits)
    ex.extract(Page("http://warm.example/", page.provenance, "<p>warm up the extraction process</p>"))
    start = time.monotonic()
    try:
        doc = ex.extract(page)
        outcome = f"document ({len(doc.nodes)} nodes)"
    except ExtractionError as e:
        outcome = f"reject: {e.reason}"
    seconds = time.monotonic() - start
    ex.close()  # reaps the child: its peak joins RUSAGE_CHILDREN
    return {
        "name": name,
        "chars": len(html),
        "outcome": outcome,
        "seconds": seconds,
        "peak_mb": _peak_mb(resource.RUSAGE_SELF) + _peak_mb(resource.RUSAGE_CHILDREN),
        "timeout_s": cfg.limits.parse_timeout_s,
    }


def baseline(name: str, limit_s: float) -> str:
    code = (
        "import sys, time; from benchmarks.hostile import INPUTS; from selectolax.lexbor import LexborHTMLParser; "
        f"h = INPUTS[{name!r}][1](); t = time.monotonic(); LexborHTMLParser(h); print(time.monotonic() - t)"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return f"> {limit_s:g} s"
    return f"{float(out.stdout.strip()):.2f} s"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="input names (default: all)")
    ap.add_argument("--timeout", type=float, default=None, help="parse_timeout_s (default: the config's)")
    ap.add_argument("--baseline", type=float, default=0, help="also time lexbor's bare parse, killed after S s")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.timeout)))
        return
    rows = []
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| input | characters | outcome | time of the page | tree peak memory |" + (" lexbor alone |" if args.baseline else ""))
    print("| --- | ---: | --- | ---: | ---: |" + (" ---: |" if args.baseline else ""))
    for name in args.only or INPUTS:
        cmd = [sys.executable, "-m", "benchmarks.hostile", "--one", name]
        if args.timeout is not None:
            cmd += ["--timeout", str(args.timeout)]
        res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        if args.baseline:
            res["lexbor_alone"] = baseline(name, args.baseline)
        rows.append(res)
        line = (
            f"| {INPUTS[name][0]} | {res['chars']:,} | {res['outcome']} | {res['seconds']:.3f} s | "
            f"{res['peak_mb']:.0f} MB |" + (f" {res['lexbor_alone']} |" if args.baseline else "")
        )
        print(line, flush=True)
    print(f"\nparse_timeout_s: {rows[0]['timeout_s']} (every time ≤ it + 1 s; every peak ≤ 1,024 MB)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
