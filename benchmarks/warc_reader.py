"""Records/s of ``pipeline.warc.iter_warc`` against a bare FastWARC loop over the same real WARCs.

Anchor (same process, same files): FastWARC's ArchiveIterator reading every record's payload.
Also timed: a bare warcio loop (the fallback reader), to show why FastWARC is the fast path.

    .venv/bin/python -m benchmarks.warc_reader [--repeat 7] [FILE ...]

Default files: the larger real crawls in ../shared/data/warc. Target: iter_warc >= 0.8x FastWARC.
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import time
from pathlib import Path

from pipeline.config import LimitsConfig
from pipeline.warc import iter_warc

DATA = Path(os.environ.get("M3W_SHARED_DATA", Path(__file__).resolve().parent.parent.parent / "shared" / "data")) / "warc"
DEFAULT_FILES = [
    "local_wget_crawls/handbook-fr-de.warc.gz",
    "local_wget_crawls/pydocs.warc.gz",
    "aut_test_resources/example.warc.gz",
    "ipwb_samples/sample-1.warc.gz",
    "pywb_sample_archive/warcs/iana.warc.gz",
    "ukwa_webarchive_discovery/gov.uk-revisit-warcs/BL-20140325121225068-00000-32090~opera~8443.warc.gz",
]


def bare_fastwarc(paths: list[str]) -> int:
    from fastwarc.warc import ArchiveIterator

    n = 0
    for p in paths:
        with open(p, "rb") as f:
            for rec in ArchiveIterator(f):
                rec.reader.read()
                n += 1
    return n


def bare_warcio(paths: list[str]) -> int:
    from warcio.archiveiterator import ArchiveIterator

    n = 0
    for p in paths:
        with open(p, "rb") as f:
            for rec in ArchiveIterator(f):
                rec.content_stream().read()
                n += 1
    return n


def ours(paths: list[str]) -> int:
    n = 0
    for p in paths:
        stats: collections.Counter = collections.Counter()
        for _ in iter_warc(p, LimitsConfig(), stats=stats):
            pass
        n += stats["records"]
    return n


def timed(fn, paths) -> tuple[float, int]:
    t = time.perf_counter()
    n = fn(paths)
    return time.perf_counter() - t, n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    paths = args.files or [str(DATA / f) for f in DEFAULT_FILES]
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        raise SystemExit(f"no WARC files found under {DATA}; pass files on the command line")
    size = sum(os.path.getsize(p) for p in paths)
    print(f"{len(paths)} files, {size / 1e6:.1f} MB on disk, best of {args.repeat}")
    ours(paths[:1])  # warm imports and caches
    # Rounds alternate the readers, so load from other processes hits all of them alike; the
    # ratio is the median of the per-round ratios, times are the best round.
    times: dict[str, list[float]] = {"fastwarc": [], "ours": [], "warcio": []}
    counts = {}
    for _ in range(args.repeat):
        for key, fn in (("fastwarc", bare_fastwarc), ("ours", ours), ("warcio", bare_warcio)):
            t, counts[key] = timed(fn, paths)
            times[key].append(t)
    print(f"{'reader':<28}{'records':>9}{'best s':>10}{'records/s':>12}{'vs FastWARC (median)':>22}")
    for name, key in (("FastWARC bare loop", "fastwarc"), ("m3w iter_warc", "ours"), ("warcio bare loop", "warcio")):
        ratio = statistics.median(f / t for f, t in zip(times["fastwarc"], times[key]))
        best = min(times[key])
        print(f"{name:<28}{counts[key]:>9}{best:>10.3f}{counts[key] / best:>12.0f}{ratio:>21.2f}x")


if __name__ == "__main__":
    main()
