"""Assembles docs/BENCHMARKS.md from the summary (docs/bench/SUMMARY.md) and each area's page.

    .venv/bin/python -m benchmarks.collect_docs
"""
from __future__ import annotations

import os

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
ORDER = ["pipeline.md", "warc.md", "extraction.md", "filters.md", "images.md", "dedup.md",
         "fault-tolerance-fuzz.md", "model.md", "train.md"]


def main() -> None:
    bench = os.path.join(DOCS, "bench")
    parts = [open(os.path.join(bench, "SUMMARY.md"), encoding="utf-8").read().rstrip()]
    names = [n for n in ORDER if os.path.exists(os.path.join(bench, n))]
    names += sorted(n for n in os.listdir(bench) if n.endswith(".md") and n not in ORDER and n != "SUMMARY.md")
    for name in names:
        text = open(os.path.join(bench, name), encoding="utf-8").read().strip()
        # Each area page starts at heading level 1 or 2; nest it one level under this page.
        lines = [("#" + l if l.startswith("#") else l) for l in text.splitlines()]
        if not lines[0].startswith("## "):
            lines[0] = "## " + lines[0].lstrip("#").strip()
        parts.append("\n".join(lines))
    with open(os.path.join(DOCS, "BENCHMARKS.md"), "w", encoding="utf-8") as f:
        f.write("\n\n---\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
