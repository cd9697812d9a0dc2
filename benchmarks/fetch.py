"""Fetcher throughput against loopback HTTP servers started here (one port = one host).

Anchor, in the same process against the same servers: a bare sequential ``urllib.request``
loop over the same URLs (no robots.txt, no checks). Then ``FetchEngine`` with the default
politeness settings of ``FetchConfig`` (32 threads, 2 in flight and 4 requests/s per host,
robots.txt fetched per host), and with politeness limits lifted to show the engine's own ceiling.

    .venv/bin/python -m benchmarks.fetch [--hosts 64] [--per-host 8]

``--hostile``: the attack classes of the fetcher instead (docs/FAULT_TOLERANCE.md). Each hostile
server of ``tests/pipeline/test_fetch.py`` (raw sockets on 127.0.0.1) is fetched once at
``timeout_s: 3`` in a child process of its own; the figures are the attempt's wall time and the
child's peak RSS (the whole process tree: fetcher, server and threads are that one process),
against an anchor child that fetches one ordinary image. Then the request flood (a page of 5,000
images, screened vs. every image requested), gzip member attacks and the address check.

    .venv/bin/python -m benchmarks.fetch --hostile [--timeout 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

from pipeline.config import FetchConfig
from pipeline.fetch import FetchEngine


def make_image() -> bytes:
    """A 640 x 480 JPEG photo-like payload (~100 KB): a noisy gradient."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    rgb = np.stack([x * 255 // 640, y * 255 // 480, (x + y) % 256], -1) + rng.integers(-30, 30, (480, 640, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def start_servers(n: int, body: bytes):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            payload = b"User-agent: *\nAllow: /\n" if self.path == "/robots.txt" else body
            self.send_response(200)
            self.send_header("Content-Type", "text/plain" if self.path == "/robots.txt" else "image/jpeg")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    servers = []
    for _ in range(n):
        s = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
    return servers


def run_engine(cfg: FetchConfig, urls: list[str]) -> tuple[float, int]:
    engine = FetchEngine(cfg)
    t = time.perf_counter()
    results = engine.fetch_many(urls)
    elapsed = time.perf_counter() - t
    engine.close()
    return len(urls) / elapsed, sum(r.ok for r in results)


def _one_hostile(name: str, timeout: float) -> None:
    """Child process: one attempt against one hostile (or the anchor's ordinary) server; prints JSON."""
    from tests.pipeline.test_fetch import HostileServer, Server

    if name == "anchor":
        server = Server()
        url = server.base + "/img/a.jpg"
    else:
        server = HostileServer("silent" if name == "tls_handshake_silent" else name, tls_wait=name == "tls_handshake_silent")
        url = server.base.replace("http://", "https://" if name == "tls_handshake_silent" else "http://") + "/a.jpg"
    cfg = FetchConfig(allowed_networks=["127.0.0.1/32"], timeout_s=timeout, retries=0, respect_robots=False)
    engine = FetchEngine(cfg)
    t = time.perf_counter()
    (res,) = engine.fetch_many([url])
    print(json.dumps({"reason": res.reason or "ok", "seconds": time.perf_counter() - t}))
    engine.close()
    server.close()


def _child(args: list[str]) -> tuple[dict, float]:
    """Run ``python -m benchmarks.fetch ARGS``; its JSON line and its peak RSS in MB."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.fetch", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, (args, proc.returncode)
    return json.loads(out.decode().strip().splitlines()[-1]), usage.ru_maxrss / 1024


def _gzip_case(name: str) -> None:
    """Child process: decode one hostile gzip body; prints JSON."""
    import gzip

    from pipeline.fetch import _Fail, decode_body

    def zeros(n: int) -> bytes:  # a gzip member of n zero bytes, compressed without holding them
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
            block = b"\0" * 1_000_000
            for _ in range(n // len(block)):
                f.write(block)
        return buf.getvalue()

    body = {
        "gzip_200k_empty_members": lambda: gzip.compress(b"") * 200_000,
        "gzip_bomb_over_members": lambda: zeros(15_000_000) * 2,  # 2 x 15 MB, each under the 20 MB cap
        "gzip_bomb_one_member": lambda: zeros(1_000_000_000),  # 1 GB of zeros
    }[name]()
    t = time.perf_counter()
    try:
        decode_body(body, "gzip", FetchConfig().max_bytes)
        reason = "ok"
    except _Fail as f:
        reason = f.reason
    print(json.dumps({"reason": reason, "seconds": time.perf_counter() - t, "input_bytes": len(body)}))


def hostile(timeout: float) -> None:
    from pipeline.config import ImageConfig
    from pipeline.fetch import _address_allowed, screen_candidates
    from schemas.document import Document, ImageNode, Provenance
    from tests.pipeline.test_fetch import HOSTILE, Server

    print(f"load average {os.getloadavg()[0]:.2f}; timeout_s {timeout}")
    anchor, anchor_mb = _child(["--one-hostile", "anchor", "--timeout", str(timeout)])
    print(f"| {'anchor: one ordinary image':40} | {anchor['reason']:14} | {anchor['seconds']:7.2f} | {anchor_mb:6.0f} |")
    for name in [*HOSTILE, "tls_handshake_silent"]:
        got, mb = _child(["--one-hostile", name, "--timeout", str(timeout)])
        print(f"| {name:40} | {got['reason']:14} | {got['seconds']:7.2f} | {mb:6.0f} |")
    for name in ("gzip_200k_empty_members", "gzip_bomb_over_members", "gzip_bomb_one_member"):
        got, mb = _child(["--gzip-case", name])
        print(f"| {name + ' (' + format(got['input_bytes'], ',') + ' B)':40} | {got['reason']:14} | {got['seconds']:7.2f} | {mb:6.0f} |")

    # The request flood: one page citing 5,000 missing images.
    server = Server()
    nodes = [ImageNode(f"{server.base}/rate/{i}.jpg", declared_width=300, declared_height=200) for i in range(5000)]
    doc = Document(url="http://pages.example/flood.html", provenance=Provenance("x.warc", 0, 1, ""), nodes=nodes)
    cfg = FetchConfig(allowed_networks=["127.0.0.1/32"], per_host_rate=None, per_host_concurrency=32)
    list(screen_candidates(doc, ImageConfig(), cfg))  # imports pipeline.images once, outside the timing
    t = time.perf_counter()
    wanted = [u for u, reason in screen_candidates(doc, ImageConfig(), cfg) if not reason]
    screening = time.perf_counter() - t
    FetchEngine(cfg).fetch_many(wanted)
    screened = time.perf_counter() - t
    screened_requests = sum(server.hits.values())
    server.hits.clear()
    t = time.perf_counter()
    FetchEngine(cfg).fetch_many([n.url for n in nodes])
    everything = time.perf_counter() - t
    print(f"flood page, 5,000 missing images, per-host limits lifted: screened {screened_requests} requests in {screened:.2f} s "
          f"(screening {screening * 1e3:.0f} ms); "
          f"every image {sum(server.hits.values())} requests in {everything:.2f} s (ratio {screened / everything:.3f})")
    server.close()

    samples = ["8.8.8.8", "2606:4700::1111", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "2001:0:a9fe:a9fe::1", "::ffff:10.0.0.1"]
    strict = FetchConfig()
    n = 20_000
    t = time.perf_counter()
    for i in range(n):
        _address_allowed(samples[i % len(samples)], strict)
    print(f"address check: {(time.perf_counter() - t) / n * 1e6:.1f} us per address (mixed IPv4/IPv6 forms)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--per-host", type=int, default=8)
    ap.add_argument("--hostile", action="store_true", help="the fetcher's attack classes, not its throughput")
    ap.add_argument("--timeout", type=float, default=3.0, help="fetch.timeout_s for --hostile")
    ap.add_argument("--one-hostile", help=argparse.SUPPRESS)
    ap.add_argument("--gzip-case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one_hostile:
        return _one_hostile(args.one_hostile, args.timeout)
    if args.gzip_case:
        return _gzip_case(args.gzip_case)
    if args.hostile:
        return hostile(args.timeout)
    body = make_image()
    servers = start_servers(args.hosts, body)
    urls = [f"http://127.0.0.1:{s.server_address[1]}/img/{i}.jpg" for i in range(args.per_host) for s in servers]
    print(f"{args.hosts} hosts x {args.per_host} images of {len(body) / 1e3:.0f} KB = {len(urls)} fetches")

    t = time.perf_counter()
    for u in urls:
        with urllib.request.urlopen(u, timeout=10) as r:
            r.read()
    bare = len(urls) / (time.perf_counter() - t)
    print(f"bare sequential urllib loop: {bare:7.1f} img/s")

    polite = FetchConfig(allowed_networks=["127.0.0.1/32"])
    r, ok = run_engine(polite, urls)
    # Per host: robots.txt at t=0, then one image every 1/per_host_rate s.
    bound = polite.per_host_rate * args.hosts
    print(f"FetchEngine defaults (concurrency {polite.concurrency}, {polite.per_host_concurrency}/host, "
          f"{polite.per_host_rate}/s/host, robots.txt): {r:7.1f} img/s ({ok} ok) | ratio {r / bare:.2f} "
          f"| politeness bound ~{bound:.0f} img/s")
    fast = dataclasses.replace(polite, per_host_rate=None, per_host_concurrency=polite.concurrency)
    r, ok = run_engine(fast, urls)
    print(f"FetchEngine, per-host limits lifted (concurrency {fast.concurrency}): {r:7.1f} img/s ({ok} ok) | ratio {r / bare:.2f}")
    for s in servers:
        s.shutdown()


if __name__ == "__main__":
    main()
