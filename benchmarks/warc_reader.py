"""Records/s of ``pipeline.warc.iter_warc`` against a bare FastWARC loop over the same WARCs.

Anchor (same process, same files): FastWARC's ArchiveIterator reading every record's payload.
Also timed: ``iter_warc`` with every page's ``Page.html`` read (pages decode on first access, so
this adds charset resolution and decoding), and a bare warcio loop (the fallback reader), to show
why FastWARC is the fast path. Times are CPU seconds of this process (the machine is shared);
rounds alternate the readers and each ratio is the median of the per-round ratios.

    .venv/bin/python -m benchmarks.warc_reader [--repeat 7] [FILE ...]
    .venv/bin/python -m benchmarks.warc_reader --build /tmp/wb    # writes big.warc and big.warc.gz (100 MB each)
    .venv/bin/python -m benchmarks.warc_reader /tmp/wb/big.warc

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
from pipeline.records import Page
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


def ours_decoded(paths: list[str]) -> int:
    n = 0
    for p in paths:
        stats: collections.Counter = collections.Counter()
        for item in iter_warc(p, LimitsConfig(), stats=stats):
            if isinstance(item, Page):
                item.html  # noqa: B018  (first access resolves the charset and decodes)
        n += stats["records"]
    return n


def timed(fn, paths) -> tuple[float, int]:
    t = time.process_time()  # CPU time: other jobs on the machine do not count against a reader
    n = fn(paths)
    return time.process_time() - t, n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--build", metavar="DIR", help="write DIR/big.warc and DIR/big.warc.gz (100 MB of real pages repeated) and exit")
    args = ap.parse_args(argv)
    if args.build:
        from benchmarks.memory_1gb import build_warc

        os.makedirs(args.build, exist_ok=True)
        for name, gz in (("big.warc", False), ("big.warc.gz", True)):
            n, size = build_warc(os.path.join(args.build, name), 100_000_000, gz)
            print(f"wrote {os.path.join(args.build, name)}: {n} records, {size / 1e6:.0f} MB")
        return
    paths = args.files or [str(DATA / f) for f in DEFAULT_FILES]
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        raise SystemExit(f"no WARC files found under {DATA}; pass files on the command line")
    size = sum(os.path.getsize(p) for p in paths)
    print(f"{len(paths)} files, {size / 1e6:.1f} MB on disk, {args.repeat} rounds, CPU time")
    ours(paths[:1])  # warm imports and caches
    # Rounds alternate the readers, so load from other processes hits all of them alike; the
    # ratio is the median of the per-round ratios, times are the best round.
    readers = (
        ("FastWARC bare loop", "fastwarc", bare_fastwarc),
        ("m3w iter_warc", "ours", ours),
        ("iter_warc + Page.html", "decoded", ours_decoded),
        ("warcio bare loop", "warcio", bare_warcio),
    )
    times: dict[str, list[float]] = {key: [] for _, key, _ in readers}
    counts = {}
    for _ in range(args.repeat):
        for _name, key, fn in readers:
            t, counts[key] = timed(fn, paths)
            times[key].append(t)
    print(f"{'reader':<28}{'records':>9}{'best s':>10}{'records/s':>12}{'vs FastWARC (median)':>22}{'range':>14}")
    for name, key, _fn in readers:
        ratios = [f / t for f, t in zip(times["fastwarc"], times[key])]
        best = min(times[key])
        print(
            f"{name:<28}{counts[key]:>9}{best:>10.3f}{counts[key] / best:>12.0f}{statistics.median(ratios):>21.2f}x"
            f"{min(ratios):>8.2f}-{max(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
