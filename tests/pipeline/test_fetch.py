"""The image fetcher against HTTP servers the tests start on 127.0.0.1 (no other network)."""
from __future__ import annotations

import collections
import gzip
import ipaddress
import io
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline.config import FetchConfig
from pipeline.fetch import FetchEngine, FetchImages, x_robots_forbids

ROBOTS = b"User-agent: *\nDisallow: /private/\n\nUser-agent: m3w-image-fetcher\nDisallow: /private/\nDisallow: /nom3w/\n"


def _jpeg(seed: int = 0, size=(96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


IMAGE = _jpeg()


class _QuietServer(ThreadingHTTPServer):
    """A client hanging up mid-body (the fetcher's byte cap, its timeout) is expected here."""

    request_queue_size = 128  # the default 5 drops SYNs of a burst: the client's retransmit adds 1 s

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class Server:
    """A loopback HTTP server with a route per test case; records every request it gets."""

    def __init__(self, robots_status: int = 200, robots: bytes = ROBOTS, host: str = "127.0.0.1"):
        self.robots_status = robots_status
        self.robots = robots
        self.hits: collections.Counter[str] = collections.Counter()
        self.times: list[tuple[float, str]] = []
        self.user_agents: set[str] = set()
        self.cdn = ""  # where /cdn/<name> redirects (another server's base URL)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def _send(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                if not any(k.lower() == "content-length" for k, _ in headers):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                with lock:
                    outer.hits[path] += 1
                    outer.times.append((time.monotonic(), path))
                    outer.user_agents.add(self.headers.get("User-Agent", ""))
                    n = outer.hits[path]
                img = [("Content-Type", "image/jpeg")]
                if path == "/robots.txt":
                    return self._send(outer.robots_status, outer.robots if outer.robots_status == 200 else b"")
                if path.startswith(("/img/", "/private/", "/nom3w/", "/rate/")):
                    return self._send(200, IMAGE, img)
                if path.startswith("/photo/"):  # a distinct picture per number
                    return self._send(200, _jpeg(int(path[7:].split(".")[0])), img)
                if path == "/noai.jpg":
                    return self._send(200, IMAGE, img + [("X-Robots-Tag", "noindex, noai")])
                if path == "/otherbot-noai.jpg":
                    return self._send(200, IMAGE, img + [("X-Robots-Tag", "otherbot: noimageai")])
                if path == "/slow.jpg":
                    time.sleep(1.0)
                    return self._send(200, IMAGE, img)
                if path == "/drip.jpg":  # headers at once, then a byte every 100 ms
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    for _ in range(100):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.1)
                    return None
                if path == "/big.jpg":
                    return self._send(200, IMAGE * 100, img)
                if path == "/big-unannounced.jpg":  # no Content-Length: the cap must hold while reading
                    self.send_response(200)
                    self.end_headers()
                    for _ in range(100):
                        self.wfile.write(IMAGE)
                    return None
                if path == "/404.jpg":
                    return self._send(404, b"not here")
                if path == "/500.jpg":
                    return self._send(500, b"oops")
                if path == "/busy.jpg":  # asks to come back in 1 s
                    return self._send(429, b"slow down", [("Retry-After", "1")]) if n == 1 else self._send(200, IMAGE, img)
                if path == "/flaky.jpg":
                    return self._send(503, b"busy") if n == 1 else self._send(200, IMAGE, img)
                if path == "/redirect-ok.jpg":
                    return self._send(302, b"", [("Location", "/img/target.jpg")])
                if path == "/redirect-private.jpg":
                    return self._send(302, b"", [("Location", "http://169.254.169.254/latest/meta-data/")])
                if path == "/redirect-loopback.jpg":
                    return self._send(302, b"", [("Location", f"http://127.0.0.2:{outer.port}/img/a.jpg")])
                if path.startswith("/cdn/"):
                    return self._send(302, b"", [("Location", f"{outer.cdn}/rate/{path[5:]}")])
                if path == "/gzip-members.jpg":  # two gzip members: a reader that stops at the first cuts the image
                    half = len(IMAGE) // 2
                    body = gzip.compress(IMAGE[:half]) + gzip.compress(IMAGE[half:])
                    return self._send(200, body, img + [("Content-Encoding", "gzip")])
                if path == "/redirect-loop.jpg":
                    return self._send(302, b"", [("Location", "/redirect-loop.jpg")])
                return self._send(404, b"")

        lock = threading.Lock()
        server_class = _QuietServer
        if ":" in host:
            server_class = type("_QuietServer6", (_QuietServer,), {"address_family": socket.AF_INET6})
        self.httpd = server_class((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _forever(step):
    while True:
        yield step


# Hostile responses, each (bytes, delay before sending it) steps; a raw socket sends them.
HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 4\r\n\r\nabcd"
CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"


def _trickle(data, delay):
    for i in range(len(data)):
        yield data[i:i + 1], delay


HOSTILE = {
    "silent": lambda: iter(()),  # accepts, reads the request, says nothing
    "status_line_slow": lambda: _trickle(b"HTTP/1.1 200 OK\r\n" * 10, 0.2),
    "headers_byte_by_byte": lambda: _trickle(HEADERS * 10, 0.05),
    "endless_headers_slow": lambda: _chain([(b"HTTP/1.1 200 OK\r\n", 0)], _forever((b"X-Pad: y\r\n", 0.05))),
    "endless_headers_fast": lambda: _chain([(b"HTTP/1.1 200 OK\r\n", 0)], _forever((b"X-Pad: y\r\n" * 100, 0.001))),
    "chunk_size_lines_slow": lambda: _chain([(CHUNKED, 0)], _trickle(b"10" * 1000, 0.2)),
    "chunk_data_slow": lambda: _chain([(CHUNKED + b"100000\r\n", 0)], _forever((b"x", 0.01))),
    "chunk_extensions_endless": lambda: _chain([(CHUNKED + b"4;", 0)], _forever((b"a", 0.01))),
    "chunk_extensions_endless_fast": lambda: _chain([(CHUNKED + b"4;", 0)], _forever((b"a" * 4096, 0.001))),
    "chunks_endless_tiny": lambda: _chain([(CHUNKED, 0)], _forever((b"1\r\nx\r\n", 0.01))),
    "body_drip": lambda: _chain([(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", 0)], _forever((b"x", 0.05))),
}


def _chain(*parts):
    for part in parts:
        yield from part


class HostileServer:
    """A raw-socket server on 127.0.0.1 that answers every connection with one ``HOSTILE`` script and
    records, per connection, how long the client kept it open (until it closed or shut it down)."""

    def __init__(self, script, tls_wait: bool = False, linger: bool = True):
        self.steps = HOSTILE[script] if isinstance(script, str) else script
        self.linger = linger  # after the script, keep the connection open until the client goes
        self.tls_wait = tls_wait  # do not even read an HTTP request (a TLS client waits for our hello)
        self.held: list[float] = []  # seconds from accept to the client's close, per connection
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _client_gone(self, conn, wait: float) -> bool:
        """Wait up to ``wait`` s; True when the client closed the connection meanwhile."""
        conn.settimeout(max(wait, 1e-4))
        try:
            return conn.recv(65536) == b""
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            return True

    def _serve(self, conn):
        started = time.monotonic()
        try:
            if not self.tls_wait:
                request = b""
                conn.settimeout(5)
                while b"\r\n\r\n" not in request:
                    got = conn.recv(65536)
                    if not got:
                        return
                    request += got
            for data, delay in self.steps():
                if self._client_gone(conn, delay):
                    return
                conn.sendall(data)
            while self.linger and not self._stop and not self._client_gone(conn, 0.5):
                pass
        except OSError:
            return  # the client reset the connection
        finally:
            self.held.append(time.monotonic() - started)
            conn.close()

    def close(self):
        self._stop = True
        self.listener.close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def cfg(**kw) -> FetchConfig:
    """Fast settings for tests; the loopback server is allowed by network, not by a blanket switch."""
    base = dict(timeout_s=0.4, retries=2, backoff_s=0.05, per_host_rate=None, per_host_concurrency=4,
                concurrency=8, allowed_networks=["127.0.0.1/32"])
    base.update(kw)
    return FetchConfig(**base)


def fetch(urls, config=None, resolver=None):
    engine = FetchEngine(config or cfg(), **({"resolver": resolver} if resolver else {}))
    try:
        return engine.fetch_many(urls)
    finally:
        engine.close()


def _eventually(cond, within: float = 3.0) -> bool:
    end = time.monotonic() + within
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def test_images_are_fetched_with_our_user_agent(server):
    (res,) = fetch([server.base + "/img/a.jpg"])
    assert res.ok and res.status == 200 and res.body == IMAGE and res.ip == "127.0.0.1"
    assert server.user_agents == {FetchConfig().user_agent}
    assert server.hits["/robots.txt"] == 1


def test_robots_txt_disallow_is_honoured_and_fetched_once(server):
    urls = [server.base + p for p in ("/private/a.jpg", "/nom3w/b.jpg", "/img/c.jpg", "/img/d.jpg")]
    got = [(r.reason or "ok") for r in fetch(urls)]
    assert got == ["robots_disallowed", "robots_disallowed", "ok", "ok"]
    assert server.hits["/private/a.jpg"] == server.hits["/nom3w/b.jpg"] == 0
    assert server.hits["/robots.txt"] == 1
    # respect_robots off fetches everything
    assert all(r.ok for r in fetch(urls[:2], cfg(respect_robots=False)))


def test_robots_txt_server_error_means_stay_out_and_404_means_no_rules():
    down = Server(robots_status=503)
    missing = Server(robots_status=404)
    try:
        (a,) = fetch([down.base + "/img/a.jpg"])
        (b,) = fetch([missing.base + "/img/a.jpg"])
    finally:
        down.close()
        missing.close()
    assert a.reason == "robots_unavailable" and down.hits["/img/a.jpg"] == 0
    assert b.ok


def test_x_robots_tag_noai_drops_the_image(server):
    noai, other = fetch([server.base + "/noai.jpg", server.base + "/otherbot-noai.jpg"])
    assert (noai.reason, noai.detail, noai.body) == ("x_robots_tag", "noindex", b"")
    assert other.ok  # addressed to another crawler


def test_x_robots_tag_parsing():
    ua = "m3w-image-fetcher/0.1"
    assert x_robots_forbids(["noimageai"], ua) == "noimageai"
    assert x_robots_forbids(["max-image-preview:large, noimageindex"], ua) == "noimageindex"
    assert x_robots_forbids(["m3w-image-fetcher: noai"], ua) == "noai"
    assert x_robots_forbids(["googlebot: noindex", "nofollow"], ua) is None
    assert x_robots_forbids(["unavailable_after: 25 Jun 2010 15:00:00 PST"], ua) is None


def test_slow_responses_time_out_and_are_retried(server):
    t = time.monotonic()
    slow, drip = fetch([server.base + "/slow.jpg", server.base + "/drip.jpg"], cfg(retries=1))
    elapsed = time.monotonic() - t
    assert (slow.reason, drip.reason) == ("timeout", "timeout")
    assert slow.attempts == drip.attempts == 2
    assert _eventually(lambda: server.hits["/slow.jpg"] == 2)  # the server may log the retry after we gave up on it
    assert elapsed < 2.5  # a dripping body is cut at the per-attempt deadline, not per byte


def test_oversized_bodies_are_cut_at_the_byte_cap(server):
    big, unannounced = fetch([server.base + "/big.jpg", server.base + "/big-unannounced.jpg"], cfg(max_bytes=len(IMAGE) * 10))
    assert big.reason == "too_large" and "Content-Length" in big.detail
    assert unannounced.reason == "too_large" and unannounced.body == b""


def test_404_is_final_and_500_is_retried_with_backoff(server):
    t = time.monotonic()
    nf, err, flaky = fetch([server.base + p for p in ("/404.jpg", "/500.jpg", "/flaky.jpg")], cfg(retries=2, backoff_s=0.1))
    elapsed = time.monotonic() - t
    assert (nf.reason, nf.attempts, server.hits["/404.jpg"]) == ("http_404", 1, 1)
    assert (err.reason, err.attempts, server.hits["/500.jpg"]) == ("http_5xx", 3, 3)
    assert flaky.ok and flaky.attempts == 2 and flaky.body == IMAGE
    assert elapsed >= 0.1 + 0.2  # backoff 0.1 then 0.2 before the third attempt


def test_redirects_are_followed_and_each_hop_is_checked(server):
    ok, meta, loop, loopback = fetch(
        [server.base + p for p in ("/redirect-ok.jpg", "/redirect-private.jpg", "/redirect-loop.jpg", "/redirect-loopback.jpg")]
    )
    assert ok.ok and ok.final_url == server.base + "/img/target.jpg" and ok.url == server.base + "/redirect-ok.jpg"
    assert meta.reason == "private_address" and "169.254.169.254" in meta.detail
    assert loop.reason == "too_many_redirects"
    assert loopback.reason == "private_address"  # 127.0.0.2 is outside the allowed 127.0.0.1/32
    # Allowed, the hop is attempted; nothing listens on 127.0.0.2, so that host's robots.txt is
    # unreachable (RFC 9309: stay out), and without robots the image request itself fails.
    (hop,) = fetch([server.base + "/redirect-loopback.jpg"], cfg(allow_private_addresses=True))
    assert hop.reason == "robots_unavailable"
    (hop,) = fetch([server.base + "/redirect-loopback.jpg"], cfg(allow_private_addresses=True, respect_robots=False))
    assert hop.reason == "connection_error"


def test_private_addresses_are_refused_after_dns_resolution(server):
    (direct,) = fetch([server.base + "/img/a.jpg"], cfg(allowed_networks=None))
    assert direct.reason == "private_address"
    assert server.hits["/img/a.jpg"] == 0 and server.hits["/robots.txt"] == 0

    def resolver(host, port):  # stands in for DNS: a public-looking name that points inside
        if host == "images.example.com":
            return ["127.0.0.1"]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    url = f"http://images.example.com:{server.port}/img/a.jpg"
    rebound, unknown = fetch([url, "http://no-such-host.invalid/a.jpg"], cfg(allowed_networks=None), resolver)
    assert rebound.reason == "private_address" and unknown.reason == "dns_error"
    (allowed,) = fetch([url], cfg(), resolver)
    assert allowed.ok and allowed.ip == "127.0.0.1"
    (bad,) = fetch(["ftp://example.com/a.jpg"])
    assert bad.reason == "bad_url"


def test_a_dns_lookup_that_hangs_times_out_with_the_attempt(server):
    def hanging(host, port):  # a resolver that never answers in time
        time.sleep(3.0)
        return ["127.0.0.1"]

    t = time.monotonic()
    (res,) = fetch([f"http://slow-dns.example:{server.port}/img/a.jpg"], cfg(timeout_s=0.3, retries=1, respect_robots=False), hanging)
    assert res.reason == "timeout" and "DNS" in res.detail and res.attempts == 2
    assert time.monotonic() - t < 1.5  # two 0.3 s attempts and a backoff, not the resolver's 3 s


def assert_paced(starts: list[float], n: int, interval: float) -> None:
    """``n`` requests seen by the server no faster than one per ``interval``. Judged on the span
    from the first to the last: the server stamps a request when its thread runs, and on a loaded
    host one stamp can lag by a few hundred ms, which makes a single gap look short; requests that
    skip the limiter collapse the span."""
    starts = sorted(starts)
    assert len(starts) >= n, starts
    assert starts[-1] - starts[0] >= 0.75 * (n - 1) * interval, np.round(np.diff(starts), 3)


def test_per_host_rate_limit_is_observed(server):
    rate = 10.0
    urls = [f"{server.base}/rate/{i}.jpg" for i in range(6)]
    t = time.monotonic()
    got = fetch(urls, cfg(per_host_rate=rate, per_host_concurrency=4, timeout_s=2.0))
    elapsed = time.monotonic() - t
    assert all(r.ok for r in got)
    assert_paced([ts for ts, _ in server.times], 7, 1 / rate)  # robots.txt + 6 images
    assert elapsed >= 6 / rate - 0.05


def test_per_host_rate_holds_for_redirect_targets(server):
    """Six sites whose images all redirect to one CDN: each site gets one request, and the CDN's
    requests (its robots.txt included) still start 1/rate apart."""
    cdn = Server()
    server.cdn = cdn.base
    try:
        sites = [f"site{i}.example" for i in range(6)]

        def resolver(host, port):
            if host in sites or host == "127.0.0.1":
                return ["127.0.0.1"]
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        rate = 10.0
        got = fetch([f"http://{h}:{server.port}/cdn/{i}.jpg" for i, h in enumerate(sites)], cfg(per_host_rate=rate, timeout_s=2.0), resolver)
    finally:
        cdn.close()
    assert all(r.ok for r in got) and {r.final_url for r in got} == {f"{cdn.base}/rate/{i}.jpg" for i in range(6)}
    assert_paced([ts for ts, _ in cdn.times], 7, 1 / rate)  # robots.txt + 6 images


def test_robots_crawl_delay_and_retry_after_are_honoured():
    s = Server(robots=b"User-agent: *\nCrawl-delay: 0.3\n")
    try:
        got = fetch([f"{s.base}/rate/{i}.jpg" for i in range(3)], cfg(per_host_rate=None, timeout_s=2.0))
        busy = fetch([s.base + "/busy.jpg"], cfg(per_host_rate=None, backoff_s=0.01, timeout_s=2.0))
    finally:
        s.close()
    assert all(r.ok for r in got) and busy[0].ok and busy[0].attempts == 2
    assert_paced([ts for ts, path in s.times if path.startswith("/rate/")], 3, 0.3)
    busy_starts = [ts for ts, path in s.times if path == "/busy.jpg"]
    assert busy_starts[1] - busy_starts[0] >= 1.0 - 0.02


def test_per_host_concurrency_is_observed(server):
    # /slow.jpg holds the connection for 1 s; with 2 per host, 4 requests need two rounds.
    urls = [f"{server.base}/slow.jpg?{i}" for i in range(4)]
    t = time.monotonic()
    got = fetch(urls, cfg(per_host_concurrency=2, timeout_s=3.0, retries=0))
    assert all(r.ok for r in got)
    assert time.monotonic() - t >= 2.0


def test_fetch_images_archives_responses_as_warc(server, tmp_path):
    from warcio.archiveiterator import ArchiveIterator

    urls = [server.base + p for p in ("/img/a.jpg", "/img/b.jpg", "/redirect-ok.jpg", "/404.jpg", "/private/x.jpg", "/noai.jpg")]
    archive = str(tmp_path / "fetched")
    p = TestPipeline()
    out = p | beam.Create(urls + urls[:2]) | FetchImages(cfg(), archive)
    assert_that(
        out.rejects | "Reasons" >> beam.Map(lambda r: (r.stage, r.reason, r.url)),
        equal_to([
            ("fetch", "http_404", server.base + "/404.jpg"),
            ("fetch", "robots_disallowed", server.base + "/private/x.jpg"),
            ("fetch", "x_robots_tag", server.base + "/noai.jpg"),
        ]),
        label="Rejects",
    )

    assert_that(out.images | "Urls" >> beam.Map(lambda r: r.url), equal_to(urls[:3]), label="Images")
    provenance = tmp_path / "provenance.txt"

    def save(recs, path=str(provenance)):  # runs in the pipeline; the checks follow the run
        with open(path, "w") as f:
            for r in recs:
                prov = r.provenance
                f.write(f"{r.url}\t{getattr(r, 'source', None)}\t{prov.warc_filename}\t{prov.warc_record_offset}\t"
                        f"{prov.warc_record_length}\t{prov.warc_record_id}\t{r.data.hex()}\n")

    _ = out.images | "AllImages" >> beam.combiners.ToList() | "Save" >> beam.Map(save)
    result = p.run()
    result.wait_until_finish()
    from pipeline.fetch import ARCHIVE_NAME

    files = sorted(os.listdir(archive))
    assert files and all(ARCHIVE_NAME.match(f) for f in files), files  # no temporary names left
    rows = [line.split("\t") for line in provenance.read_text().splitlines()]
    assert len(rows) == 3
    for url, source, filename, offset, length, record_id, data in rows:
        assert source == "fetch" and bytes.fromhex(data) == IMAGE
        with open(filename, "rb") as f:
            f.seek(int(offset))
            raw = f.read(int(length))
        rec = next(iter(ArchiveIterator(io.BytesIO(raw))))
        assert rec.rec_type == "response" and rec.content_stream().read() == IMAGE
        assert rec.rec_headers.get_header("WARC-Record-ID") == record_id
        assert rec.rec_headers.get_header("WARC-Target-URI") == url
        if url.endswith("/redirect-ok.jpg"):
            assert rec.rec_headers.get_header("M3W-Final-URI").endswith("/img/target.jpg")
    c = {m.key.metric.name: m.committed for m in result.metrics().query(MetricsFilter().with_namespace("m3w"))["counters"]}
    assert c["fetch.fetched"] == 3 and c["fetch.bytes"] == 3 * len(IMAGE)
    assert c["fetch.dropped_http_404"] == 1 and c["fetch.dropped_robots_disallowed"] == 1
    assert server.hits["/img/a.jpg"] == 1  # duplicates fetched once


def test_archive_reads_back_as_crawl_input(server, tmp_path):
    """The archive is an ordinary WARC: the build's reader yields the same image records from it."""
    from pipeline.fetch import WarcArchive
    from pipeline.records import ImageRecord
    from pipeline.warc import iter_warc

    results = fetch([server.base + "/img/a.jpg", server.base + "/redirect-ok.jpg"])
    archive = WarcArchive(str(tmp_path))
    provs = [archive.write(r) for r in results]
    archive.close()
    items = [i for i in iter_warc(archive.path) if isinstance(i, ImageRecord)]
    assert [(i.url, i.data, i.provenance.warc_record_offset) for i in items] == [
        (server.base + "/img/a.jpg", IMAGE, provs[0].warc_record_offset),
        (server.base + "/redirect-ok.jpg", IMAGE, provs[1].warc_record_offset),  # the URL pages reference
    ]


# ---------------------------------------------------------------------------------------------
# Addresses: every IPv6 form that embeds an IPv4 is judged by that IPv4

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pipeline.fetch import _address_allowed  # noqa: E402

# Not globally reachable (IANA IPv4 special-purpose registry), multicast, reserved.
FORBIDDEN_V4 = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
                "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
                "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4"]
STRICT = FetchConfig()  # no exemptions


def _v4_in(net: str):
    n = ipaddress.IPv4Network(net)
    return st.integers(0, n.num_addresses - 1).map(lambda i: ipaddress.IPv4Address(int(n.network_address) + i))


forbidden_v4 = st.sampled_from(FORBIDDEN_V4).flatmap(_v4_in)
any_v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
bits = st.integers(0, 2**80 - 1)


def _v6(n: int) -> str:
    return str(ipaddress.IPv6Address(n))


# Each form: (name, IPv4 -> IPv6 text given random filler bits)
FORMS = {
    "nat64": lambda v4, r: _v6((0x64FF9B << 96) | int(v4)),
    "mapped": lambda v4, r: _v6((0xFFFF << 32) | int(v4)),
    "translated": lambda v4, r: _v6((0xFFFF << 48) | int(v4)),
    "compatible": lambda v4, r: _v6(int(v4)),
    "6to4": lambda v4, r: _v6((0x2002 << 112) | (int(v4) << 80) | (r & (2**80 - 1))),
    "teredo_server": lambda v4, r: _v6((0x20010000 << 96) | (int(v4) << 64) | (r & (2**64 - 1))),
    "teredo_client": lambda v4, r: _v6((0x20010000 << 96) | ((r & 0xFFFFFFFF) << 64) | (int(v4) ^ 0xFFFFFFFF)),
    "isatap": lambda v4, r: _v6((0x2A00 << 112) | ((r & (2**48 - 1)) << 64) | (0x5EFE << 32) | int(v4)),
}


def test_forms_embed_where_the_rfcs_say():
    meta = ipaddress.IPv4Address("169.254.169.254")
    assert [FORMS[f](meta, 0) for f in ("nat64", "mapped", "translated", "compatible")] == [
        "64:ff9b::a9fe:a9fe", "::ffff:a9fe:a9fe", "::ffff:0:a9fe:a9fe", "::a9fe:a9fe"]
    assert FORMS["6to4"](meta, 1) == "2002:a9fe:a9fe::1"
    assert FORMS["teredo_client"](meta, 0) == "2001::5601:5601"
    for literal in ("64:ff9b::a9fe:a9fe", "::169.254.169.254", "2002:a9fe:a9fe::1", "::ffff:0:169.254.169.254",
                    "2001:0:a9fe:a9fe::1", "64:ff9b:1::a9fe:a9fe", "64:ff9b:1:a9fe:a9:fe00::"):
        assert not _address_allowed(literal, STRICT), literal


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(FORMS)), forbidden_v4, bits)
def test_every_form_embedding_a_forbidden_ipv4_is_refused(form, v4, r):
    assert not _address_allowed(str(v4), STRICT)
    assert not _address_allowed(FORMS[form](v4, r), STRICT), FORMS[form](v4, r)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(FORMS)), any_v4 | forbidden_v4, bits)
def test_every_form_is_judged_exactly_as_the_ipv4_it_embeds(form, v4, r):
    r |= 1 << 40  # Teredo's other IPv4 (server or client) stays public: 0.0.1.x is refused, 1.0.0.0/8 is not
    other_public = ipaddress.IPv4Address(0x01000000 | (r & 0xFFFF))
    if form == "teredo_server":
        r = (r & ~0xFFFFFFFF) | (int(other_public) ^ 0xFFFFFFFF)
    elif form == "teredo_client":
        r = (r & ~0xFFFFFFFF) | int(other_public)
    assert _address_allowed(FORMS[form](v4, r), STRICT) == _address_allowed(str(v4), STRICT)
    # an exemption for the IPv4 exempts its IPv6 forms too (a loopback test server over NAT64)
    exempt = FetchConfig(allowed_networks=[f"{v4}/32"])
    assert _address_allowed(FORMS[form](v4, r), exempt)


@settings(max_examples=200, deadline=None)
@given(bits)
def test_local_use_nat64_is_refused_whatever_it_embeds(r):
    # RFC 8215: the IPv4's position depends on the operator's prefix length, so it cannot be judged.
    assert not _address_allowed(_v6((0x0064FF9B0001 << 80) | r), STRICT)


def test_plain_addresses():
    for ok in ("8.8.8.8", "1.1.1.1", "2606:4700::1111", "2a00:1450:4001::200e"):
        assert _address_allowed(ok, STRICT), ok
    for bad in ("127.0.0.1", "10.1.2.3", "100.64.0.1", "192.0.0.8", "255.255.255.255", "::", "::1", "fe80::1%eth0",
                "fc00::1", "fd12::1", "ff02::1", "100::1", "2001:db8::1", "3fff::1", "fec0::1", "ff02::5efe:808:808",
                "2001:db8::5efe:808:808"):
        assert not _address_allowed(bad, STRICT), bad


def test_literal_address_tricks_never_reach_a_loopback_server(server):
    """Decimal, octal, hex, trailing-dot and IPv6 spellings of 127.0.0.1, and userinfo, through the
    system resolver with no exemption: all refused before any connection."""
    port = server.port
    urls = [f"http://{h}:{port}/img/a.jpg" for h in (
        "2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "127.1", "localhost", "localhost.",
        "[::ffff:127.0.0.1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]", "[::ffff:0:7f00:1]", "[2002:7f00:1::1]",
        "[::1]", "user@127.0.0.1")]
    urls += [f"http://127.0.0.1:{port}@no-such-host.invalid/img/a.jpg", f"file:///etc/passwd", "gopher://127.0.0.1/"]
    got = fetch(urls, cfg(allowed_networks=None, retries=0, timeout_s=2.0))
    assert {r.reason for r in got} <= {"private_address", "dns_error", "bad_url"}, [(r.url, r.reason) for r in got]
    assert sum(server.hits.values()) == 0


# ---------------------------------------------------------------------------------------------
# Deadlines: the whole attempt ends at timeout_s whatever the server does


@pytest.mark.timeout(60)
def test_every_trickle_ends_at_the_attempt_deadline():
    """Each hostile server on its own port, all fetched at once: the attempt against each ends by
    timeout_s + 1 s (seen from the server: the client hung up by then), as a timeout or, where the
    parser gives up first, a bad response."""
    timeout = 1.5
    servers = {name: HostileServer(name) for name in HOSTILE}
    servers["tls_handshake_silent"] = HostileServer("silent", tls_wait=True)
    urls = {name: f"{s.base}/a.jpg" for name, s in servers.items()}
    urls["tls_handshake_silent"] = urls["tls_handshake_silent"].replace("http://", "https://")
    t = time.monotonic()
    try:
        got = fetch(list(urls.values()), cfg(timeout_s=timeout, retries=0, respect_robots=False, concurrency=len(urls)))
        elapsed = time.monotonic() - t
        assert _eventually(lambda: all(s.held for s in servers.values()))  # every server saw its hang-up
    finally:
        for s in servers.values():
            s.close()
    reasons = {name: r.reason for name, r in zip(urls, got)}
    fast_failures = {"endless_headers_fast", "chunk_extensions_endless_fast"}  # the parser's own line/count caps
    assert {n: r for n, r in reasons.items() if n not in fast_failures} == {n: "timeout" for n in urls if n not in fast_failures}
    assert {reasons[n] for n in fast_failures} <= {"bad_response", "timeout"}
    assert elapsed <= timeout + 1.0, elapsed
    held = {name: max(s.held) for name, s in servers.items()}
    assert all(h <= timeout + 1.0 for h in held.values()), held


@pytest.mark.timeout(60)
def test_a_trickling_robots_txt_ends_at_its_deadline_and_keeps_the_host_out():
    s = HostileServer("headers_byte_by_byte")
    t = time.monotonic()
    try:
        (res,) = fetch([s.base + "/a.jpg"], cfg(timeout_s=1.0, retries=0))
        elapsed = time.monotonic() - t
    finally:
        s.close()
    assert res.reason == "robots_unavailable" and "timeout" in res.detail, res
    assert elapsed <= 1.0 + 1.0 and s.connections == 1  # robots.txt only: the image is never asked for


def test_a_body_cut_short_of_its_content_length_is_not_an_image():
    s = HostileServer(lambda: iter([(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10, 0)]), linger=False)
    try:
        (res,) = fetch([s.base + "/a.jpg"], cfg(timeout_s=2.0, retries=0, respect_robots=False))
    finally:
        s.close()
    assert res.reason == "bad_response" and "short" in res.detail


# ---------------------------------------------------------------------------------------------
# IPv6 literals, redirects to the same host, multi-member gzip


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_ipv6_literal_urls_keep_their_brackets():
    from pipeline.fetch import host_key
    from pipeline.urls import normalize_url

    assert host_key("http://[::1]:8080/a.jpg") == "http://[::1]:8080"
    assert host_key("https://[2001:DB8::1]/a.jpg") == "https://[2001:db8::1]:443"
    assert normalize_url("HTTP://[2001:DB8::1]:80/a.jpg?b=1&a=2") == "http://[2001:db8::1]/a.jpg?a=2&b=1"
    assert normalize_url("http://[::1]:8080/a.jpg") == "http://[::1]:8080/a.jpg"


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_an_ipv6_literal_url_is_fetched_with_its_robots_txt():
    s = Server(host="::1")
    try:
        (res,) = fetch([s.base + "/img/a.jpg"], cfg(allowed_networks=["::1/128"]))
        (refused,) = fetch([s.base + "/img/b.jpg"], cfg(allowed_networks=["127.0.0.1/32"]))
    finally:
        s.close()
    assert res.ok and res.body == IMAGE and res.ip == "::1"
    assert s.hits["/robots.txt"] == 1 and s.hits["/img/a.jpg"] == 1
    assert refused.reason == "private_address" and s.hits["/img/b.jpg"] == 0


def test_a_redirect_to_the_same_host_waits_for_its_rate_slot(server):
    rate = 10.0
    got = fetch([f"{server.base}/redirect-ok.jpg?{i}" for i in range(3)], cfg(per_host_rate=rate, timeout_s=2.0))
    assert all(r.ok and r.final_url.endswith("/img/target.jpg") for r in got)
    assert_paced([ts for ts, _ in server.times], 7, 1 / rate)  # robots.txt + 3 redirects + 3 targets


def test_every_gzip_member_is_decoded(server):
    (res,) = fetch([server.base + "/gzip-members.jpg"])
    assert res.ok and res.body == IMAGE
    assert not any(k.lower() == "content-encoding" for k, _ in res.headers)


def test_gzip_decoding_is_bounded_across_members_and_refuses_damage():
    from pipeline.fetch import _Fail, decode_body

    one = gzip.compress(b"a" * 1000)
    assert decode_body(one * 3, "gzip", 3000) == b"a" * 3000
    assert decode_body(one + b"\0" * 100 + one, "gzip", 2000) == b"a" * 2000  # zero padding between members
    cases = {
        "too_large": one * 4,  # each member within the cap, all of them not
        "bad_response": one + one[:-10],  # the second member truncated
    }
    for reason, body in cases.items():
        with pytest.raises(_Fail) as e:
            decode_body(body, "gzip", 3000)
        assert e.value.reason == reason
    empties = gzip.compress(b"") * 200_000  # 4 MB of empty members: refused fast, not looped over
    t = time.monotonic()
    with pytest.raises(_Fail) as e:
        decode_body(empties, "gzip", 20_000_000)
    assert e.value.reason == "bad_response" and "members" in e.value.detail
    assert time.monotonic() - t < 5.0
    bomb = gzip.compress(b"\0" * 50_000_000)  # 50 MB of zeros in 49 KB
    with pytest.raises(_Fail) as e:
        decode_body(bomb, "gzip", 1_000_000)
    assert e.value.reason == "too_large"


# ---------------------------------------------------------------------------------------------
# Budgets and screening before any request


def test_a_host_gets_at_most_its_request_budget(server):
    got = fetch([f"{server.base}/img/{i}.jpg" for i in range(20)] + [server.base + "/redirect-ok.jpg"],
                cfg(max_requests_per_host=5, per_host_concurrency=1))
    assert sum(server.hits.values()) == 5  # robots.txt + 4 images, or a redirect and its hop
    assert sum(r.ok for r in got) <= 4
    assert {r.reason for r in got if not r.ok} == {"host_budget"}


def test_screening_keeps_dom_order_and_counts_only_images_that_could_be_kept():
    from pipeline.config import ImageConfig
    from pipeline.fetch import candidate_window, screen_candidates
    from schemas.document import Document, ImageNode, Provenance, TextNode

    images = ImageConfig(min_side=64, max_aspect_ratio=3.0, url_keywords=["logo"], max_images_per_doc=3)
    fc = FetchConfig(candidate_margin=1, declared_pixel_ratio=2.0, max_candidates_per_doc=100)
    assert candidate_window(images, fc) == 4
    assert candidate_window(ImageConfig(max_images_per_doc=None), fc) == 100
    assert candidate_window(ImageConfig(max_images_per_doc=None), FetchConfig(max_candidates_per_doc=None)) is None
    nodes = [TextNode("x"), ImageNode("http://a.example/1.jpg"), ImageNode("http://a.example/small.jpg", declared_width=31),
             ImageNode("http://a.example/retina.jpg", declared_width=32, declared_height=32),  # 64 px at 2x: may be kept
             ImageNode("http://a.example/auto.jpg", declared_width=0, declared_height=200),
             ImageNode("http://a.example/banner.jpg", declared_width=400, declared_height=100),
             ImageNode("http://a.example/logo.png"), ImageNode("http://A.example/1.jpg#again"),
             ImageNode("http://a.example/4.jpg"), ImageNode("http://a.example/5.jpg")]
    doc = Document(url="http://a.example/", provenance=Provenance("x.warc", 0, 1, ""), nodes=nodes)
    assert list(screen_candidates(doc, images, fc)) == [
        ("http://a.example/1.jpg", ""), ("http://a.example/small.jpg", "declared_size"),
        ("http://a.example/retina.jpg", ""), ("http://a.example/auto.jpg", ""),
        ("http://a.example/banner.jpg", "declared_aspect"), ("http://a.example/logo.png", "url_pattern"),
        ("http://a.example/4.jpg", ""), ("http://a.example/5.jpg", "over_cap"),
    ]
    off = ImageConfig(min_side=None, max_aspect_ratio=None, url_keywords=None, max_images_per_doc=None)
    assert all(not r for _, r in screen_candidates(doc, off, FetchConfig(max_candidates_per_doc=None)))
