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
        # Nest each area page under this one: its top heading level becomes ##.
        lines = text.splitlines()
        in_code = False
        levels = []
        for l in lines:
            in_code ^= l.startswith("```")
            if not in_code and l.startswith("#"):
                levels.append(len(l) - len(l.lstrip("#")))
        shift = 2 - min(levels) if levels else 0
        out, in_code = [], False
        for l in lines:
            in_code ^= l.startswith("```")
            out.append("#" * shift + l if not in_code and l.startswith("#") and shift > 0 else l)
        lines = out
        parts.append("\n".join(lines))
    with open(os.path.join(DOCS, "BENCHMARKS.md"), "w", encoding="utf-8") as f:
        f.write("\n\n---\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
