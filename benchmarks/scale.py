"""Scale benchmark: `build-m3w build` on 100 MB – 4 GB of realistic crawl, whole-process-tree memory.

The input is built from the real pages and images of ../shared/data/warc: copy ``k`` of the crawl
puts every page and every image under fresh hosts (``k<k>-<host>``), rewriting the URLs in the
HTML so that each page cites its own copy's images. Each copy must survive deduplication the way
a real crawl's distinct pages do, so it is made distinct, cheaply:

* text: a stop word from a per-copy sequence is inserted after every sixth word of the text
  between tags (no 5-word shingle is shared between copies, the stop-word ratios stay English);
* images: pixels change per copy without a decode: JPEG quantisation tables (one DC entry moves
  by a copy-specific step), PNG image data (one byte of the inflated scanlines, re-deflated),
  GIF palettes (one entry). The stored, re-encoded image then has its own sha256 and pHash-close
  pixels, as a re-post of a photo would.

Written as per-record gzip WARCs (as crawlers write them), one file per size. Then one run of
``build-m3w build`` (local runner, ``--direct_num_workers`` workers, rejects on) per size, sampling
the RSS of the whole process tree (driver and every worker) every 0.2 s with psutil. Reported:
peak tree RSS, wall time, pages read per second, CPU seconds of the tree (user + system) and the
cores used on average, documents and images written, and the host's load average.

    .venv/bin/python -m benchmarks.scale --sizes 0.1,1,4 --dir /work/bench-scale [--workers 2] [--keep]

The generated WARCs (and outputs) live in ``--dir``, outside the repository; they are deleted
after each size unless ``--keep``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from benchmarks.memory_1gb import DATA, REPO
from benchmarks.memory_1gb import SOURCES as MEMORY_SOURCES

# The memory benchmark's crawls, and those that add pages with their own images.
SOURCES = MEMORY_SOURCES + [
    "node_warc_tests/books.toscrape.warc",
    "pywb_sample_archive/warcs/iana.warc.gz",
    "ipwb_samples/sample-1.warc.gz",
    "resiliparse_tests/warcfile.warc.gz",
]
STOP = "the of and to in a is that for it as with was on be by this are at from or an".split()
_IMG_SRC = re.compile(r"""<img\b[^>]*?\bsrc\s*=\s*["']?([^"'\s>]+)""", re.I)
_TEXT = re.compile(r">([^<]{40,})<")
_SIX_WORDS = re.compile(r"(?:\S+\s+){6}")


def load_sources() -> tuple[list[tuple[str, str]], dict[str, tuple[bytes, str]]]:
    """(page URL, HTML) of every page and {image URL: (bytes, content type)} of the real crawls."""
    from pipeline.config import LimitsConfig
    from pipeline.records import ImageRecord, Page
    from pipeline.warc import iter_warc

    pages, images = [], {}
    for rel in SOURCES:
        path = DATA / rel
        if not path.exists():
            continue
        for item in iter_warc(str(path), LimitsConfig()):
            if isinstance(item, Page):
                pages.append((item.url, item.html))
            elif isinstance(item, ImageRecord):
                images.setdefault(item.url, (item.data, item.content_type))
    if not pages:
        raise SystemExit(f"no WARC files under {DATA}")
    return pages, images


def _host_re(hosts: set[str]) -> re.Pattern:
    alts = "|".join(re.escape(h) for h in sorted(hosts, key=len, reverse=True))
    return re.compile(r"//(" + alts + r")(?=[/:\"'\s>?#]|$)", re.I)


def fresh_url(url: str, k: int) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"k{k}-{parts.netloc}").geturl()


def vary_text(html: str, k: int) -> str:
    """Insert a stop word from copy ``k``'s sequence after every sixth word of each text run."""
    rng = random.Random(k)
    words = [STOP[rng.randrange(len(STOP))] for _ in range(257)]
    at = [0]

    def add(m: re.Match) -> str:
        at[0] += 1
        return m.group(0) + words[at[0] % 257] + " "

    return _TEXT.sub(lambda m: ">" + _SIX_WORDS.sub(add, m.group(1)) + "<", html)


def vary_image(data: bytes, k: int) -> bytes:
    """The same picture with copy-specific pixels (see the module docstring); other formats as they are."""
    if data[:3] == b"\xff\xd8\xff":
        at = data.find(b"\xff\xdb")
        if at > 0 and at + 5 < len(data):
            out = bytearray(data)
            q = at + 5  # marker, length (2), precision/table id, then the first (DC) entry
            out[q] = 1 + (out[q] - 1 + 1 + k % 13) % 64 if out[q] else 1
            return bytes(out)
        return data
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _vary_png(data, k)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) > 16 and data[10] & 0x80:
        out = bytearray(data)
        out[13 + 3 * (k % 2)] ^= 1 + k % 7  # one palette entry's red
        return bytes(out)
    return data


def _vary_png(data: bytes, k: int) -> bytes:
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks.append((kind, data[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    idat = b"".join(body for kind, body in chunks if kind == b"IDAT")
    try:
        raw = bytearray(zlib.decompress(idat))
    except zlib.error:
        return data
    if len(raw) < 4:
        return data
    at = 1 + (k * 7919) % (len(raw) - 1)
    if at % max(1, len(raw) // 1000) == 0:
        at = 1
    raw[at] = (raw[at] + 1 + k % 200) % 256
    out = [data[:8]]
    done = False
    for kind, body in chunks:
        if kind == b"IDAT":
            if done:
                continue
            body, done = zlib.compress(bytes(raw), 1), True
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    return b"".join(out)


def _response(url: str, ctype: str, body: bytes) -> bytes:
    http = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    head = (
        "WARC/1.0\r\nWARC-Type: response\r\n"
        f"WARC-Record-ID: <urn:uuid:{uuid.uuid4()}>\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
        f"WARC-Target-URI: {url}\r\nContent-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {len(http)}\r\n\r\n"
    ).encode()
    return gzip.compress(head + http + b"\r\n\r\n", compresslevel=1, mtime=0)


def build_warc(path: str, size: int) -> dict:
    """Write ~``size`` bytes of per-record gzip WARC, copy after copy of the real crawls."""
    pages, images = load_sources()
    hosts = {urlsplit(u).netloc for u, _ in pages} | {urlsplit(u).netloc for u in images}
    hosts.discard("")
    host_re = _host_re(hosts)
    cited = {}
    for url, html in pages:
        cited[url] = sorted({u for u in (urljoin(url, s) for s in _IMG_SRC.findall(html)) if u in images})
    n_pages = n_images = written = k = 0
    with open(path, "wb") as out:
        while written < size:
            for url, html in pages:
                new = host_re.sub(lambda m: f"//k{k}-{m.group(1)}", vary_text(html, k))
                blob = _response(fresh_url(url, k), "text/html; charset=utf-8", new.encode("utf-8", "surrogatepass"))
                out.write(blob)
                written += len(blob)
                n_pages += 1
            for url, (data, ctype) in images.items():
                blob = _response(fresh_url(url, k), ctype or "application/octet-stream", vary_image(data, k))
                out.write(blob)
                written += len(blob)
                n_images += 1
            k += 1
    return {"copies": k, "pages": n_pages, "images": n_images, "bytes": written,
            "pages_citing_crawled_images": sum(1 for v in cited.values() if v) * k}


def run_build(warc: str, out: str, workers: int, extra: list[str]) -> dict:
    cmd = [str(REPO / ".venv" / "bin" / "build-m3w"), "build", "--input", warc, "--output", out,
           "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}", *extra]
    r = run_sampled(cmd)
    report = json.loads(Path(out, "report.json").read_text())
    counters = report.get("counters", report)
    manifest = json.loads(Path(out, "manifest.json").read_text())
    wds = manifest["totals"].get("wds", {})
    pages = _counter(counters, "read.html_pages")
    r.update({"pages": pages, "pages_per_s": pages / r["wall_s"], "documents": wds.get("documents", 0),
              "images": wds.get("images", 0),
              "rejects_bytes": sum(f.stat().st_size for f in Path(out, "rejects").rglob("*") if f.is_file())})
    return r


READ_ONLY = r"""
import sys, apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from pipeline.config import Config, LimitsConfig
from pipeline.extract import ExtractDocuments
from pipeline.warc import ReadWarcFiles
cfg = Config()
path, workers, range_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
opts = PipelineOptions(["--runner=FnApiRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"])
with beam.Pipeline(options=opts) as p:
    read = p | beam.Create([path]) | ReadWarcFiles(LimitsConfig(), range_bytes=range_bytes)
    docs = read.pages | ExtractDocuments(cfg.extract, cfg.limits)
    _ = docs.documents | beam.combiners.Count.Globally() | beam.Map(print)
"""


def read_cores(warc: str, workers: int, range_bytes: int) -> dict:
    """CPU use of reading and extracting one WARC on the local runner, in ranges or whole."""
    return run_sampled([sys.executable, "-c", READ_ONLY, warc, str(workers), str(range_bytes)])


def run_sampled(cmd: list[str]) -> dict:
    """Runs ``cmd``, sampling the whole process tree every 0.2 s: peak RSS, CPU seconds per process."""
    import psutil

    load_before = os.getloadavg()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, cpu_by_pid = 0, {}
    ps = psutil.Process(proc.pid)
    lines: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            procs = [ps] + ps.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        rss = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
                c = p.cpu_times()
                cpu_by_pid[p.pid] = c.user + c.system
            except psutil.NoSuchProcess:
                pass
        peak = max(peak, rss)
        time.sleep(0.2)
    wall = time.perf_counter() - t
    reader.join(5)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n" + "".join(lines[-40:]))
    cpu = sum(cpu_by_pid.values())
    return {"wall_s": wall, "peak_tree_rss": peak, "cpu_s": cpu, "cores": cpu / wall,
            "load_before": load_before, "load_after": os.getloadavg(), "processes": len(cpu_by_pid),
            "cpu_s_per_process": sorted((round(v, 1) for v in cpu_by_pid.values()), reverse=True)}


def _counter(report: dict, name: str) -> int:
    for key in (name, f"m3w.{name}"):
        if key in report:
            return int(report[key])
    for value in report.values():
        if isinstance(value, dict):
            got = _counter(value, name)
            if got:
                return got
    return 0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.1,1,4", help="GB of per-record gzip WARC per run, comma-separated")
    ap.add_argument("--dir", default="/work/bench-scale", help="where the WARCs and outputs go (outside the repo)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the generated WARCs and outputs")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--read-cores", action="store_true",
                    help="instead of builds: CPU use of reading + extracting each WARC, in 64 MB ranges and whole")
    ap.add_argument("beam_args", nargs="*", help="extra build-m3w arguments (after --)")
    args = ap.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    rows = []
    for gb in [float(x) for x in args.sizes.split(",")]:
        warc = os.path.join(args.dir, f"scale-{gb:g}GB.warc.gz")
        out = os.path.join(args.dir, f"out-{gb:g}GB")
        t = time.perf_counter()
        if not os.path.exists(warc):
            info = build_warc(warc, int(gb * 1e9))
            print(f"built {warc}: {json.dumps(info)} in {time.perf_counter() - t:.0f} s", flush=True)
        if args.build_only:
            continue
        if args.read_cores:
            for label, rb in (("ranges", 64 << 20), ("whole", 1 << 62)):
                r = read_cores(warc, args.workers, rb)
                print(json.dumps({"read": label, "input_gb": os.path.getsize(warc) / 1e9, **r}), flush=True)
            continue
        shutil.rmtree(out, ignore_errors=True)
        r = run_build(warc, out, args.workers, args.beam_args)
        r["input_gb"] = os.path.getsize(warc) / 1e9
        rows.append(r)
        print(json.dumps(r), flush=True)
        if not args.keep:
            os.remove(warc)
            shutil.rmtree(out, ignore_errors=True)
    if rows:
        print(f"\n{'input GB':>9}{'peak tree RSS GiB':>19}{'wall s':>8}{'pages':>8}{'pages/s':>9}{'CPU s':>8}"
              f"{'cores':>7}{'docs':>7}{'images':>8}{'load before/after':>19}")
        for r in rows:
            print(f"{r['input_gb']:>9.2f}{r['peak_tree_rss'] / 2**30:>19.2f}{r['wall_s']:>8.0f}{r['pages']:>8}"
                  f"{r['pages_per_s']:>9.0f}{r['cpu_s']:>8.0f}{r['cores']:>7.2f}{r['documents']:>7}{r['images']:>8}"
                  f"{r['load_before'][0]:>10.1f}/{r['load_after'][0]:.1f}")


if __name__ == "__main__":
    main()
