"""Records/s of ``pipeline.warc.iter_warc`` against a bare FastWARC loop over the same real WARCs.

Anchor (same process, same files): FastWARC's ArchiveIterator reading every record's payload.
Also timed: a bare warcio loop (the fallback reader), to show why FastWARC is the fast path.

    .venv/bin/python -m benchmarks.warc_reader [--repeat 3] [FILE ...]

Default files: the larger real crawls in ../shared/data/warc. Target: iter_warc >= 0.8x FastWARC.
"""
from __future__ import annotations

import argparse
import collections
import os
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


def best_of(fn, paths, repeat: int) -> tuple[float, int]:
    best = float("inf")
    n = 0
    for _ in range(repeat):
        t = time.perf_counter()
        n = fn(paths)
        best = min(best, time.perf_counter() - t)
    return best, n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    paths = args.files or [str(DATA / f) for f in DEFAULT_FILES]
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        raise SystemExit(f"no WARC files found under {DATA}; pass files on the command line")
    size = sum(os.path.getsize(p) for p in paths)
    print(f"{len(paths)} files, {size / 1e6:.1f} MB on disk, best of {args.repeat}")
    ours(paths[:1])  # warm imports and caches
    t_fw, n_fw = best_of(bare_fastwarc, paths, args.repeat)
    t_us, n_us = best_of(ours, paths, args.repeat)
    t_wi, n_wi = best_of(bare_warcio, paths, args.repeat)
    print(f"{'reader':<28}{'records':>9}{'seconds':>10}{'records/s':>12}{'vs FastWARC':>13}")
    for name, t, n in (("FastWARC bare loop", t_fw, n_fw), ("m3w iter_warc", t_us, n_us), ("warcio bare loop", t_wi, n_wi)):
        print(f"{name:<28}{n:>9}{t:>10.3f}{n / t:>12.0f}{(n / t) / (n_fw / t_fw):>12.2f}x")


if __name__ == "__main__":
    main()
