"""Fetcher throughput against loopback HTTP servers started here (one port = one host).

Anchor, in the same process against the same servers: a bare sequential ``urllib.request``
loop over the same URLs (no robots.txt, no checks). Then ``FetchEngine`` with the default
politeness settings of ``FetchConfig`` (32 threads, 2 in flight and 4 requests/s per host,
robots.txt fetched per host), and with politeness limits lifted to show the engine's own ceiling.

    .venv/bin/python -m benchmarks.fetch [--hosts 64] [--per-host 8]
"""
from __future__ import annotations

import argparse
import dataclasses
import io
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--per-host", type=int, default=8)
    args = ap.parse_args(argv)
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
