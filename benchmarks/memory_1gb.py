"""Peak memory of one worker streaming a ~1 GB WARC through ``iter_warc`` (and ``extract_document``).

The WARC is built in a temporary directory by repeating the real pages and images of
../shared/data/warc under fresh URLs, written record by record (never held in memory). Each
measurement runs in its own subprocess and reports its peak RSS (``ru_maxrss``). Anchor: a bare
FastWARC loop reading every payload of the same file. Target: iter_warc peak RSS < 1 GB.

    .venv/bin/python -m benchmarks.memory_1gb [--size-gb 1.0] [--gzip] [--extract-every 20]

``--extract-every N`` passes every N-th page through ``pipeline.extract.extract_document`` (when
it exists): memory is the question here, and extracting all ~25,000 pages would take minutes.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("M3W_SHARED_DATA", REPO.parent / "shared" / "data")) / "warc"
SOURCES = [
    "local_wget_crawls/pydocs.warc.gz",
    "local_wget_crawls/handbook-fr-de.warc.gz",
    "aut_test_resources/example.warc.gz",
    "ukwa_webarchive_discovery/wikipedia-mona-lisa/flashfrozen-jwat-recompressed.warc.gz",
]


def _record(url: str, http_block: bytes) -> bytes:
    head = (
        "WARC/1.0\r\nWARC-Type: response\r\n"
        f"WARC-Record-ID: <urn:uuid:{uuid.uuid4()}>\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
        f"WARC-Target-URI: {url}\r\nContent-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {len(http_block)}\r\n\r\n"
    ).encode()
    return head + http_block + b"\r\n\r\n"


def build_warc(path: str, size: int, compress: bool) -> tuple[int, int]:
    """Write ~``size`` bytes of response records cycling over the real ones; returns (records, bytes)."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    blocks = []
    for rel in SOURCES:
        p = DATA / rel
        if not p.exists():
            continue
        with open(p, "rb") as f:
            for rec in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=False):
                block = rec.reader.read()
                if block.startswith(b"HTTP/1.") and b" 200 " in block[:20]:
                    blocks.append(block)
    if not blocks:
        raise SystemExit(f"no WARC files under {DATA}")
    n = written = 0
    with open(path, "wb") as out:
        while written < size:
            block = blocks[n % len(blocks)]
            data = _record(f"http://copy{n}.example.org/page/{n}", block)
            if compress:
                data = gzip.compress(data, compresslevel=1)
            out.write(data)
            written += len(data)
            n += 1
    return n, written


CHILD = r"""
import collections, json, resource, sys, time
path, mode, every = sys.argv[1], sys.argv[2], int(sys.argv[3])
n = pages = extracted = 0
if mode == "fastwarc":
    t = time.perf_counter()
    from fastwarc.warc import ArchiveIterator
    with open(path, "rb") as f:
        for rec in ArchiveIterator(f):
            rec.reader.read()
            n += 1
else:
    from pipeline.config import LimitsConfig
    from pipeline.records import Page
    from pipeline.warc import iter_warc
    extract = None
    if mode == "extract":
        try:
            from pipeline.extract import ExtractionError, extract_document
            extract = extract_document
        except ImportError:
            pass
    t = time.perf_counter()  # after the imports (apache_beam alone takes seconds)
    stats = collections.Counter()
    for item in iter_warc(path, LimitsConfig(), stats=stats):
        if isinstance(item, Page):
            pages += 1
            if extract is not None and pages % every == 0:
                try:
                    extract(item)
                    extracted += 1
                except ExtractionError:
                    pass
    n = stats["records"]
print(json.dumps({"records": n, "pages": pages, "extracted": extracted, "seconds": time.perf_counter() - t,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def measure(path: str, mode: str, every: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, path, mode, str(every)], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--gzip", action="store_true", help="per-record gzip, as crawlers write")
    ap.add_argument("--extract-every", type=int, default=20)
    ap.add_argument("--keep", help="write the WARC here instead of a temporary directory")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or os.path.join(tmp, "big.warc.gz" if args.gzip else "big.warc")
        t = time.perf_counter()
        n, size = build_warc(path, int(args.size_gb * 1e9), args.gzip)
        print(f"built {path}: {n} records, {size / 1e9:.2f} GB in {time.perf_counter() - t:.0f} s")
        rows = [(mode, measure(path, mode, args.extract_every)) for mode in ("fastwarc", "iter_warc", "extract")]
    anchor = rows[0][1]["peak_rss"]
    print(f"{'run':<12}{'records':>9}{'pages':>8}{'extracted':>10}{'seconds':>9}{'peak RSS MiB':>14}{'vs FastWARC':>13}")
    for mode, r in rows:
        print(
            f"{mode:<12}{r['records']:>9}{r['pages']:>8}{r['extracted']:>10}{r['seconds']:>9.1f}"
            f"{r['peak_rss'] / 2**20:>14.0f}{r['peak_rss'] / anchor:>12.2f}x"
        )


if __name__ == "__main__":
    main()
