"""`make bench`: every benchmark, one after the other (about half an hour on 2 cores).

Each prints its figures and the ratio against its anchor from the same run; docs/bench/*.md hold
the figures last measured, and docs/BENCHMARKS.md collects them.
"""
from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    "benchmarks.pipeline_e2e",
    "benchmarks.warc_reader",
    "benchmarks.memory_1gb",
    "benchmarks.extraction",
    "benchmarks.filters",
    "benchmarks.images",
    "benchmarks.fetch",
    "benchmarks.dedup_speed",
    "benchmarks.phash_calibration",
    "benchmarks.train",
    "benchmarks.generate",
    "benchmarks.eval",
]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"\n=== python -m {name}", flush=True)
        if subprocess.run([sys.executable, "-m", name]).returncode:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
