"""A polite image fetcher for the image URLs the crawl lacks (``build-m3w build --fetch-images``).

``FetchImages``: ``(missing URLs, documents)`` or ``PCollection[str]`` (absolute image URLs) →
``images`` (``ImageRecord`` whose provenance points at the archived WARC response record) +
``rejects`` (stage "fetch").

Nothing is requested that could not be kept: per document only the first
``images.max_images_per_doc + fetch.candidate_margin`` candidates in DOM order (at most
``fetch.max_candidates_per_doc``) whose URL and declared size and shape pass the image filters
are fetched, each distinct URL once per run, and a host gets at most
``fetch.max_requests_per_host`` requests; every skipped candidate is a ``skipped_<reason>`` reject.

Politeness and safety, all from ``FetchConfig``:
- robots.txt (RFC 9309 via protego), fetched once per host per worker and cached; 4xx means
  no rules, 5xx or unreachable means nothing may be fetched; Crawl-delay is honoured;
- ``X-Robots-Tag: noai / noimageai / noindex / noimageindex`` drops the image after the headers;
- per-host concurrency and request rate (the rate for redirect targets too); URLs are grouped
  by host so one host is served by one worker at a time, and a worker interleaves hosts instead
  of waiting on a slow one;
- a deadline per attempt that holds whatever the server does (DNS, connect, TLS, headers, chunk
  lines, body, redirects): every socket call gets only the time left, and a watchdog shuts the
  socket down at the deadline; a byte cap; retries with exponential backoff on 5xx, 429,
  timeouts and dropped connections;
- private, loopback, link-local, multicast and reserved addresses are refused after DNS
  resolution, on every redirect hop, and the connection goes to the address that was checked
  (no second lookup an attacker's DNS could answer differently). IPv6 forms that reach an IPv4
  (NAT64, IPv4-mapped/-translated/-compatible, 6to4, Teredo, ISATAP) are judged by that IPv4;
  local-use NAT64 prefixes are refused.

Fetched images are written as WARC response records (warcio) under ``archive_dir``, one file
per bundle, written under a temporary name and renamed when complete, so a corpus can be
rebuilt from the archive without fetching again (pass ``<output>/fetched/*.warc.gz`` as input;
records are stored under the URL the pages reference, the final URL of a redirect in the
``M3W-Final-URI`` field). Only the standard library, warcio and protego.

Every redirect hop waits for its host's request slot (the same host's or a CDN's), so the
per-host rate holds for redirects too (their concurrency is not counted). DNS lookups use the
system resolver within the attempt's timeout: a lookup that outlasts it fails the attempt
(``timeout``, retried) without waiting for the resolver. Known limits: the archive is written
with local file operations (``archive_dir`` must be a local or mounted path); leftover
``*.tmp-*`` files are bundles that failed and were retried. An IPv4 behind an operator's own
NAT64 prefix (RFC 6052 network-specific prefixes) cannot be told from a global IPv6 address.
"""
from __future__ import annotations

import collections
import datetime as dt
import heapq
import http.client
import ipaddress
import os
import re
import socket
import ssl
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from io import BytesIO
from typing import Callable, Iterable, Iterator, NamedTuple
from urllib.parse import urljoin, urlsplit

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from pipeline.config import FetchConfig, ImageConfig
from pipeline.records import ImageRecord, Reject
from pipeline.urls import normalize_url
from schemas.document import Document, ImageNode, Provenance

STAGE = "fetch"

#: Every reason a fetch can fail with (the counter is ``fetch.dropped_<reason>``).
REJECT_REASONS = (
    "bad_url",  # not http(s), no host, unparsable
    "robots_disallowed",  # robots.txt forbids our user agent
    "robots_unavailable",  # robots.txt answered 5xx or could not be fetched: RFC 9309 says stay out
    "x_robots_tag",  # response header forbids AI use or indexing of the image
    "private_address",  # host resolves to a private/loopback/link-local/reserved address
    "dns_error",
    "timeout",
    "connection_error",
    "tls_error",
    "bad_response",  # not HTTP, broken headers or chunking
    "too_large",  # Content-Length or body above cfg.max_bytes
    "too_many_redirects",
    "http_404",
    "http_429",
    "http_4xx",
    "http_5xx",
    "content_encoding",  # an encoding we cannot undo
    "fetch_error",  # anything unexpected while fetching (the detail names the exception)
)
#: Candidates never requested (the counter is ``fetch.skipped_<reason>``, the reject reason
#: ``skipped_<reason>``): every cap and filter that can be applied before a request is.
SKIP_REASONS = (
    "over_cap",  # past the document's first images.max_images_per_doc + candidate_margin candidates (DOM order)
    "url_pattern",  # images.url_keywords would drop it after the download
    "declared_size",  # width/height attribute x declared_pixel_ratio below images.min_side
    "declared_aspect",  # width/height attributes more extreme than images.max_aspect_ratio
    "host_budget",  # its host has had fetch.max_requests_per_host requests this run
)
_RETRYABLE = frozenset({"timeout", "connection_error", "http_5xx", "http_429", "bad_response"})
_X_ROBOTS_FORBID = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
# X-Robots-Tag directives that themselves contain a colon (not a user-agent prefix).
_X_ROBOTS_KEYED = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
_CHUNK = 64 * 1024


@dataclass
class FetchResult:
    """One URL's outcome. ``reason`` is "" on success (status 200, body within the cap)."""

    url: str  # as requested
    final_url: str = ""  # after redirects
    reason: str = ""
    detail: str = ""
    status: int | None = None
    reason_phrase: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = field(default=b"", repr=False)
    ip: str = ""
    fetched_at: str = ""  # ISO 8601 UTC
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return not self.reason


class _Fail(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------------------------
# Pure helpers


def host_key(url: str) -> str:
    """``scheme://host:port`` — the unit of politeness (robots.txt, rate, concurrency)."""
    try:
        p = urlsplit(url)
        port = p.port or (443 if p.scheme == "https" else 80)
    except ValueError:
        return ""
    host = (p.hostname or "").lower()
    return f"{p.scheme}://[{host}]:{port}" if ":" in host else f"{p.scheme}://{host}:{port}"


def x_robots_forbids(values: Iterable[str], user_agent: str) -> str | None:
    """The X-Robots-Tag directive that forbids using the image, or None.

    ``values`` are the header values (the header may repeat). A value may start with a crawler
    name ("otherbot: noindex"), which then applies only to that crawler; ours is the product
    token of ``user_agent``.
    """
    ours = user_agent.split("/", 1)[0].strip().lower()
    for value in values:
        v = value.strip().lower()
        m = re.match(r"^([a-z0-9_.\-]+)\s*:\s*(.*)$", v)
        if m and m.group(1) not in _X_ROBOTS_KEYED:
            if m.group(1) not in (ours, "*"):
                continue
            v = m.group(2)
        for token in re.split(r"[,\s]+", v):
            if token in _X_ROBOTS_FORBID:
                return token
    return None


# IPv4 blocks that are not globally reachable (IANA IPv4 Special-Purpose Address Registry),
# multicast and reserved space. Written out rather than read from ``ipaddress.is_global``,
# whose lists change between Python patch releases.
_V4_REFUSED = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
))
# IPv6: only global unicast (2000::/3) is reachable, less its special-purpose blocks. 6to4 and
# Teredo are judged by the IPv4 they embed (``embedded_ipv4``), before this list.
_V6_GLOBAL = ipaddress.IPv6Network("2000::/3")
_V6_REFUSED = tuple(ipaddress.IPv6Network(n) for n in (
    "2001::/23",  # IETF protocol assignments (ORCHID, benchmarking, ...)
    "2001:db8::/32", "3fff::/20",  # documentation
    "2002::/16",  # 6to4 whose embedded IPv4 was not read (never reached: see embedded_ipv4)
))
_NAT64_WKP = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215 local-use prefixes
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # RFC 4291
_V4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291, deprecated
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")  # RFC 3056
_TEREDO = ipaddress.IPv6Network("2001::/32")  # RFC 4380
_ISATAP_IDS = (0x00005EFE, 0x02005EFE, 0x01005EFE, 0x03005EFE)  # RFC 5214 interface ids, u/g bits set or not


def embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address] | None:
    """The IPv4 addresses an IPv6 address reaches through a translation or tunnel, or None.

    NAT64 well-known prefix, IPv4-mapped, IPv4-translated and IPv4-compatible addresses carry
    the IPv4 in their last 32 bits; 6to4 in bits 16-47; Teredo the server in bits 32-63 and the
    client, inverted, in the last 32; ISATAP in the last 32 behind its interface id. An empty list
    means "reaches nothing it can be judged by" (refused).
    """
    n = int(addr)
    low = ipaddress.IPv4Address(n & 0xFFFFFFFF)
    if addr in _NAT64_WKP or addr in _V4_MAPPED or addr in _V4_TRANSLATED or addr in _V4_COMPATIBLE:
        return [low]
    if addr in _NAT64_LOCAL:
        # Where the IPv4 sits depends on the operator's prefix length (RFC 6052 2.2): unknowable.
        return []
    if addr in _SIXTOFOUR:
        return [ipaddress.IPv4Address((n >> 80) & 0xFFFFFFFF)]
    if addr in _TEREDO:
        return [ipaddress.IPv4Address((n >> 64) & 0xFFFFFFFF), ipaddress.IPv4Address(~n & 0xFFFFFFFF)]
    if addr in _V6_GLOBAL and ((n >> 32) & 0xFFFFFFFF) in _ISATAP_IDS:
        return [low]
    return None


def _in_networks(addr, networks) -> bool:
    return any(addr.version == net.version and addr in net for net in networks)


def _address_allowed(ip: str, cfg: FetchConfig) -> bool:
    """May the fetcher connect to ``ip``? Refuses every address that is not globally reachable,
    and every IPv6 form whose embedded IPv4 (``embedded_ipv4``) would be refused as IPv4;
    ``cfg.allowed_networks`` exempt an address or the IPv4 it embeds."""
    if cfg.allow_private_addresses:
        return True
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    allowed = [ipaddress.ip_network(net, strict=False) for net in cfg.allowed_networks or ()]
    if _in_networks(addr, allowed):
        return True
    if addr.version == 4:
        return not _in_networks(addr, _V4_REFUSED)
    embedded = embedded_ipv4(addr)
    if embedded is not None:
        if not embedded or not all(_in_networks(v4, allowed) or not _in_networks(v4, _V4_REFUSED) for v4 in embedded):
            return False
        if addr not in _V6_GLOBAL or addr in _SIXTOFOUR or addr in _TEREDO:
            return True  # a translation or tunnel form: what it reaches decides
    return addr in _V6_GLOBAL and not _in_networks(addr, _V6_REFUSED)


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# One HTTP exchange


class _DeadlineIO:
    """Socket methods that give each call only what is left of the attempt: a server that trickles
    one byte per read cannot stretch the attempt past its deadline (the timeout of a socket call
    is per call, not per attempt)."""

    deadline = float("inf")

    def _budget(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("attempt deadline passed")
        self.settimeout(left)

    def connect(self, *a):
        self._budget()
        return super().connect(*a)

    def do_handshake(self, *a):
        self._budget()
        return super().do_handshake(*a)

    def sendall(self, *a):
        self._budget()
        return super().sendall(*a)

    def recv(self, *a):
        self._budget()
        return super().recv(*a)

    def recv_into(self, *a):
        self._budget()
        return super().recv_into(*a)


class _DeadlineSocket(_DeadlineIO, socket.socket):
    pass


class _DeadlineSSLSocket(_DeadlineIO, ssl.SSLSocket):
    pass


class _Guard:
    """One attempt's socket, shut down by the watchdog at the deadline (under its lock, so a socket
    that was disarmed and closed is never touched)."""

    __slots__ = ("deadline", "sock", "fired", "done")

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.sock: socket.socket | None = None
        self.fired = self.done = False


class _Watchdog:
    """Ends every attempt at its deadline whatever the server does: shutting the socket down wakes
    any blocked connect, handshake or read (they return or raise at once). The per-call budget of
    ``_DeadlineIO`` already holds for socket calls; this holds for everything else as well."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, _Guard]] = []
        self._seq = 0
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float) -> _Guard:
        guard = _Guard(deadline)
        with self._cv:
            self._seq += 1
            heapq.heappush(self._heap, (deadline, self._seq, guard))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="m3w-fetch-watchdog", daemon=True)
                self._thread.start()
            self._cv.notify()
        return guard

    def attach(self, guard: _Guard, sock: socket.socket) -> None:
        with self._cv:
            if guard.fired:
                raise TimeoutError("attempt deadline passed")
            guard.sock = sock

    def disarm(self, guard: _Guard) -> None:
        with self._cv:
            guard.done = True
            guard.sock = None

    def _run(self) -> None:
        with self._cv:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cv.wait()
                    continue
                left = self._heap[0][0] - time.monotonic()
                if left > 0:
                    self._cv.wait(left)
                    continue
                guard = heapq.heappop(self._heap)[2]
                guard.fired = True
                if guard.sock is not None:
                    try:  # the socket-level call: works on a TLS socket without touching its SSL state
                        socket.socket.shutdown(guard.sock, socket.SHUT_RDWR)
                    except OSError:
                        pass  # not connected yet, or already closed


_WATCHDOG = _Watchdog()


Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class Fetcher:
    """Synchronous fetching of one URL with redirects, address checks, robots and the byte cap.

    Thread-safe; the robots.txt cache is shared by the threads of one ``FetchEngine``.
    """

    def __init__(self, cfg: FetchConfig, resolver: Resolver = system_resolver):
        self.cfg = cfg
        self._resolve = resolver
        # Called with a host key before a redirect's request to another host; returns the
        # seconds it waited for that host's request slot (``FetchEngine`` sets it).
        self.hop_gate: Callable[[str], float] | None = None
        self._robots: dict[str, object] = {}  # host key -> Protego | "allow" | ("fail", reason, detail)
        self._robots_lock = threading.Lock()
        self._robots_events: dict[str, threading.Event] = {}
        self._ssl = ssl.create_default_context()
        self._ssl.sslsocket_class = _DeadlineSSLSocket  # TLS reads and writes keep to the deadline too
        self.robots_requests = 0

    # -- connection -------------------------------------------------------------------------

    def _connect(self, url: str, deadline: float, guard: _Guard) -> tuple[http.client.HTTPConnection, str, str]:
        """A connection to a checked address (TLS handshake done), and the request target. Every
        step runs within ``deadline``: the lookup in an abandoned thread, the socket calls on the
        time left, and the watchdog behind both."""
        try:
            p = urlsplit(url)
            port = p.port or (443 if p.scheme == "https" else 80)
        except ValueError as e:
            raise _Fail("bad_url", str(e)) from None
        if p.scheme not in ("http", "https") or not p.hostname:
            raise _Fail("bad_url", url[:200])
        try:
            addresses = self._resolve_by(p.hostname, port, deadline)
        except (OSError, UnicodeError) as e:  # socket.gaierror and friends
            raise _Fail("dns_error", f"{p.hostname}: {e}") from None
        if not addresses:
            raise _Fail("dns_error", f"{p.hostname}: no address")
        refused = [a for a in addresses if not _address_allowed(a, self.cfg)]
        if refused:  # one bad answer is enough: a rebinding attacker mixes them
            raise _Fail("private_address", f"{p.hostname} -> {refused[0]}")
        ip = addresses[0]
        if deadline - time.monotonic() <= 0:
            raise _Fail("timeout", f"no time left for {url[:200]}")
        # Connect to the address we checked; TLS still verifies the host name (SNI).
        sock = _DeadlineSocket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.deadline = deadline
            _WATCHDOG.attach(guard, sock)
            sock.connect((ip, port))
            if p.scheme == "https":
                tls = self._ssl.wrap_socket(sock, server_hostname=p.hostname, do_handshake_on_connect=False)
                sock = tls
                tls.deadline = deadline
                _WATCHDOG.attach(guard, tls)
                tls.do_handshake()
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(p.hostname, port, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(p.hostname, port)
        except BaseException:
            _WATCHDOG.disarm(guard)
            sock.close()
            raise
        conn.sock = sock  # already connected: http.client does not connect again
        target = (p.path or "/") + (f"?{p.query}" if p.query else "")
        return conn, target, ip

    def _resolve_by(self, host: str, port: int, deadline: float) -> list[str]:
        """The resolver's answer within the attempt's time. getaddrinfo has no timeout of its own,
        so it runs in a daemon thread that is abandoned (not waited for) when time runs out."""
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise _Fail("timeout", f"no time left to resolve {host}")
        answer: list = []
        done = threading.Event()

        def lookup() -> None:
            try:
                answer.append(self._resolve(host, port))
            except BaseException as e:  # handed to the waiting thread
                answer.append(e)
            finally:
                done.set()

        threading.Thread(target=lookup, name="m3w-dns", daemon=True).start()
        if not done.wait(timeout):
            raise _Fail("timeout", f"DNS lookup of {host} gave no answer in {timeout:.1f} s")
        if isinstance(answer[0], BaseException):
            raise answer[0]
        return answer[0]

    def _get(self, url: str, max_bytes: int, deadline: float) -> FetchResult:
        """One GET without following redirects. Raises _Fail on transport errors."""
        guard = _WATCHDOG.arm(deadline)
        conn = None
        try:
            conn, target, ip = self._connect(url, deadline, guard)
            conn.request(
                "GET",
                target,
                headers={
                    "User-Agent": self.cfg.user_agent,
                    "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5",
                    "Accept-Encoding": "identity",
                    "Connection": "close",
                },
            )
            resp = conn.getresponse()
            res = FetchResult(url=url, final_url=url, status=resp.status, reason_phrase=resp.reason,
                              headers=list(resp.getheaders()), ip=ip, fetched_at=_now_iso())
            if resp.status != 200:
                return res
            length = resp.getheader("Content-Length")
            if length and length.strip().isdigit() and int(length) > max_bytes:
                raise _Fail("too_large", f"Content-Length {length} > {max_bytes}")
            chunks, total = [], 0
            while True:
                chunk = resp.read1(_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise _Fail("too_large", f"body > {max_bytes} bytes")
                chunks.append(chunk)
            if guard.fired:  # the watchdog's shutdown reads as the end of the body
                raise _Fail("timeout", f"body not complete after {self.cfg.timeout_s} s")
            if resp.length:  # http.client's read1 takes an early close for the end of the body
                raise _Fail("bad_response", f"body cut {resp.length} bytes short of its Content-Length")
            res.body = b"".join(chunks)
            return res
        except _Fail:
            raise
        except Exception as e:
            if guard.fired or isinstance(e, (socket.timeout, TimeoutError)) or time.monotonic() >= deadline:
                # whatever a shut-down socket made the parser say, the attempt ran out of time
                raise _Fail("timeout", f"attempt not complete after {self.cfg.timeout_s} s ({type(e).__name__})") from None
            if isinstance(e, ssl.SSLError) or isinstance(e, ssl.CertificateError):
                raise _Fail("tls_error", str(e)) from None
            if isinstance(e, (http.client.HTTPException, ValueError)):
                raise _Fail("bad_response", f"{type(e).__name__}: {e}") from None
            if isinstance(e, OSError):
                raise _Fail("connection_error", f"{type(e).__name__}: {e}") from None
            raise
        finally:
            _WATCHDOG.disarm(guard)
            if conn is not None:
                conn.close()

    def _get_following(self, url: str, max_bytes: int, check_robots: bool) -> FetchResult:
        """GET with redirects; every hop is address-checked and (for images) robots-checked."""
        deadline = time.monotonic() + self.cfg.timeout_s
        current = url
        for hop in range(self.cfg.max_redirects + 1):
            key = host_key(current)
            if hop and self.hop_gate is not None:
                # A redirect is a request of its own: it waits for its host's next slot, the same
                # host's or another's (a CDN, which gets one for its robots.txt first when that is
                # still unknown); waiting does not eat the attempt's timeout.
                if check_robots and not self.robots_known(key):
                    deadline += self.hop_gate(key)
                    self._check_robots(current)
                deadline += self.hop_gate(key)
            if check_robots:
                self._check_robots(current)
            res = self._get(current, max_bytes, deadline)
            if res.status in (301, 302, 303, 307, 308):
                location = dict((k.lower(), v) for k, v in res.headers).get("location")
                if not location:
                    return res
                current = urljoin(current, location.strip())
                continue
            res.url = url
            res.final_url = current
            return res
        raise _Fail("too_many_redirects", f"more than {self.cfg.max_redirects} from {url}")

    # -- robots.txt ---------------------------------------------------------------------------

    def _robots_for(self, key: str):
        with self._robots_lock:
            if key in self._robots:
                return self._robots[key]
            ev = self._robots_events.get(key)
            owner = ev is None
            if owner:
                ev = self._robots_events[key] = threading.Event()
        if not owner:
            ev.wait(self.cfg.timeout_s * (self.cfg.max_redirects + 2))
            with self._robots_lock:
                return self._robots.get(key, ("fail", "robots_unavailable", "robots.txt fetch did not finish"))
        try:
            rules = self._download_robots(key)
        except _Fail as f:  # the host itself is refused (private address, bad URL)
            rules = ("fail", f.reason, f.detail)
        with self._robots_lock:
            self._robots[key] = rules
            del self._robots_events[key]
        ev.set()
        return rules

    def _download_robots(self, key: str):
        from protego import Protego

        with self._robots_lock:
            self.robots_requests += 1
        try:
            res = self._get_following(key + "/robots.txt", self.cfg.max_robots_bytes, check_robots=False)
        except _Fail as f:
            if f.reason in ("private_address", "bad_url", "dns_error"):
                raise  # the host itself is refused or does not exist: say so, not "robots"
            return ("fail", "robots_unavailable", f"robots.txt: {f.reason} {f.detail}")
        if res.status == 200:
            return Protego.parse(res.body.decode("utf-8", "replace"))
        if res.status is not None and 400 <= res.status < 500:
            return "allow"  # RFC 9309 2.3.1.3: unavailable rules mean no restrictions
        return ("fail", "robots_unavailable", f"robots.txt: HTTP {res.status}")

    def _check_robots(self, url: str) -> None:
        if not self.cfg.respect_robots:
            return
        rules = self._robots_for(host_key(url))
        if rules == "allow":
            return
        if isinstance(rules, tuple):
            raise _Fail(rules[1], rules[2])
        if not rules.can_fetch(url, self.cfg.user_agent):
            raise _Fail("robots_disallowed", url[:200])

    def crawl_delay(self, key: str) -> float:
        """robots.txt Crawl-delay for ``key`` if known (capped by cfg.max_crawl_delay_s), else 0."""
        with self._robots_lock:
            rules = self._robots.get(key)
        if rules is None or isinstance(rules, (str, tuple)):
            return 0.0
        delay = rules.crawl_delay(self.cfg.user_agent) or 0.0
        return min(float(delay), self.cfg.max_crawl_delay_s)

    def robots_known(self, key: str) -> bool:
        with self._robots_lock:
            return key in self._robots or not self.cfg.respect_robots

    def set_robots_failure(self, key: str, reason: str, detail: str) -> None:
        with self._robots_lock:
            self._robots.setdefault(key, ("fail", reason, detail))
            ev = self._robots_events.pop(key, None)
        if ev is not None:
            ev.set()

    def prefetch_robots(self, key: str) -> None:
        if self.cfg.respect_robots:
            self._robots_for(key)

    # -- one attempt --------------------------------------------------------------------------

    def attempt(self, url: str) -> FetchResult:
        """One attempt at ``url`` (redirects followed); failures come back as ``reason``."""
        try:
            res = self._get_following(url, self.cfg.max_bytes, check_robots=True)
        except _Fail as f:
            return FetchResult(url=url, final_url=url, reason=f.reason, detail=f.detail, fetched_at=_now_iso())
        status = res.status or 0
        if status in (301, 302, 303, 307, 308):
            res.reason, res.detail = "bad_response", f"HTTP {status} without Location"
        elif status == 404:
            res.reason, res.detail = "http_404", res.final_url[:200]
        elif status == 429:
            res.reason, res.detail = "http_429", res.final_url[:200]
        elif 500 <= status < 600:
            res.reason, res.detail = "http_5xx", f"HTTP {status}"
        elif status != 200:
            res.reason, res.detail = "http_4xx", f"HTTP {status}"
        else:
            tags = [v for k, v in res.headers if k.lower() == "x-robots-tag"]
            forbid = x_robots_forbids(tags, self.cfg.user_agent) if self.cfg.respect_robots else None
            if forbid:
                res.reason, res.detail, res.body = "x_robots_tag", forbid, b""
            else:
                self._decode_content(res)
        return res

    def _decode_content(self, res: FetchResult) -> None:
        enc = next((v.strip().lower() for k, v in res.headers if k.lower() == "content-encoding"), "identity")
        if enc in ("identity", ""):
            return
        if enc not in ("gzip", "x-gzip", "deflate"):
            res.reason, res.detail, res.body = "content_encoding", enc, b""
            return
        try:
            res.body = decode_body(res.body, enc, self.cfg.max_bytes)
        except _Fail as f:
            res.reason, res.detail, res.body = f.reason, f.detail, b""
            return
        res.headers = [(k, v) for k, v in res.headers if k.lower() != "content-encoding"]


_MAX_GZIP_MEMBERS = 1000  # one image is one member; more than this is an attack on the decoder


def decode_body(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """Undo a gzip or deflate Content-Encoding, every member of a multi-member gzip stream
    (RFC 1952 2.2), never inflating past ``max_bytes`` in all. Raises ``_Fail`` ("too_large",
    "bad_response" for corrupt or truncated data). The input is fed in pieces, so what a member
    leaves over is copied at most a piece at a time."""
    multi = encoding != "deflate"
    wbits = 16 + zlib.MAX_WBITS if multi else zlib.MAX_WBITS
    d = zlib.decompressobj(wbits)
    out: list[bytes] = []
    total = pos = members = 0
    pending = b""
    fed = False  # the current member got input
    try:
        while True:
            if not pending:
                if pos >= len(body):
                    break
                pending = body[pos:pos + _CHUNK]
                pos += _CHUNK
            fed = True
            chunk = d.decompress(pending, max_bytes + 1 - total)
            total += len(chunk)
            if total > max_bytes:
                raise _Fail("too_large", f"decoded body > {max_bytes}")
            out.append(chunk)
            if not d.eof:
                pending = d.unconsumed_tail
                continue
            members += 1
            if not multi:
                break  # a deflate stream is one stream
            if members >= _MAX_GZIP_MEMBERS:
                raise _Fail("bad_response", f"{encoding}: more than {_MAX_GZIP_MEMBERS} members")
            # gzip readers skip zero padding between members
            pending = d.unused_data.lstrip(b"\0")
            while not pending and pos < len(body):
                pending = body[pos:pos + _CHUNK].lstrip(b"\0")
                pos += _CHUNK
            if not pending:
                fed = False
                break
            d = zlib.decompressobj(wbits)
            fed = False
    except zlib.error as e:
        raise _Fail("bad_response", f"{encoding}: {e}") from None
    if fed and not d.eof:
        raise _Fail("bad_response", f"{encoding}: truncated after {total} bytes")
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# Scheduling many URLs politely


@dataclass
class _Host:
    key: str
    queue: collections.deque = field(default_factory=collections.deque)  # (url, attempt, not_before)
    active: int = 0
    next_slot: float = 0.0
    robots_pending: bool = False
    requests: int = 0  # taken slots: robots.txt, attempts, retries, redirect hops to this host


class FetchEngine:
    """Fetches many URLs with ``cfg.concurrency`` threads under per-host limits.

    ``submit(url)`` queues; ``results(block)`` yields finished ``FetchResult``s. A host gets at
    most ``cfg.per_host_concurrency`` requests in flight and starts at most ``cfg.per_host_rate``
    per second (robots.txt requests and retries included); retries wait ``backoff_s * 2**n``
    without holding a thread. Threads start on first use and are daemons.
    """

    def __init__(self, cfg: FetchConfig, resolver: Resolver = system_resolver):
        self.cfg = cfg
        self.fetcher = Fetcher(cfg, resolver)
        self.fetcher.hop_gate = self._wait_for_slot
        self._cv = threading.Condition()
        self._hosts: collections.OrderedDict[str, _Host] = collections.OrderedDict()
        self._done: collections.deque[FetchResult] = collections.deque()
        self._pending = 0
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.retries = 0

    @property
    def pending(self) -> int:
        with self._cv:
            return self._pending

    def submit(self, url: str) -> None:
        key = host_key(url)
        with self._cv:
            host = self._hosts.get(key)
            if host is None:
                host = self._hosts[key] = _Host(key)
            host.queue.append((url, 0, 0.0))
            self._pending += 1
            self._cv.notify()
        if len(self._threads) < self.cfg.concurrency:
            t = threading.Thread(target=self._work, name=f"m3w-fetch-{len(self._threads)}", daemon=True)
            self._threads.append(t)
            t.start()

    def results(self, block: bool = False) -> Iterator[FetchResult]:
        """Finished results; with ``block`` waits until everything submitted is done."""
        while True:
            with self._cv:
                while block and not self._done and self._pending:
                    self._cv.wait(0.5)
                if not self._done:
                    return
                res = self._done.popleft()
            yield res

    def fetch_many(self, urls: Iterable[str]) -> list[FetchResult]:
        """Fetch all ``urls``; results in input order."""
        urls = list(urls)
        for u in urls:
            self.submit(u)
        by_url: dict[str, list[FetchResult]] = collections.defaultdict(list)
        for r in self.results(block=True):
            by_url[r.url].append(r)
        return [by_url[u].pop() for u in urls]

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _interval(self, key: str) -> float:
        rate = self.cfg.per_host_rate
        base = 1.0 / rate if rate else 0.0
        return max(base, self.fetcher.crawl_delay(key))

    def _wait_for_slot(self, key: str) -> float:
        """Take ``key``'s next request slot for a redirect hop, sleeping until it comes; returns
        the seconds slept. Slots are handed out under the lock, so concurrent hops to one host
        (and its own queued URLs) stay ``_interval`` apart."""
        with self._cv:
            host = self._hosts.get(key)
            if host is None:
                host = self._hosts[key] = _Host(key)
            if self._over_budget(host):
                raise _Fail("host_budget", f"{key}: {self.cfg.max_requests_per_host} requests")
            host.requests += 1
            now = time.monotonic()
            at = max(now, host.next_slot)
            host.next_slot = at + self._interval(key)
        if at > now:
            time.sleep(at - now)
        return at - now

    def _retry_after(self, res: FetchResult) -> float:
        """Seconds a 429/503 asked us to wait (Retry-After in seconds), capped like Crawl-delay."""
        value = next((v.strip() for k, v in res.headers if k.lower() == "retry-after"), "")
        return min(float(value), self.cfg.max_crawl_delay_s) if value.isdigit() else 0.0

    def _over_budget(self, host: _Host) -> bool:
        budget = self.cfg.max_requests_per_host
        return budget is not None and host.requests >= budget

    def _pick(self):
        """Under the lock: (host, url, attempt, robots_only) ready now, or the seconds to wait."""
        now = time.monotonic()
        wait = 1.0
        for host in self._hosts.values():
            if host.queue and self._over_budget(host):
                # Its budget is spent: what is queued is answered without a request.
                while host.queue:
                    url, attempt, _ = host.queue.popleft()
                    self._done.append(FetchResult(url=url, final_url=url, reason="host_budget", attempts=attempt,
                                                  detail=f"{host.key}: {self.cfg.max_requests_per_host} requests"))
                    self._pending -= 1
                self._cv.notify_all()
                continue
            if not host.queue or host.active >= self.cfg.per_host_concurrency or host.robots_pending:
                continue
            url, attempt, not_before = host.queue[0]
            ready_at = max(host.next_slot, not_before)
            if ready_at > now:
                wait = min(wait, ready_at - now)
                continue
            if not self.fetcher.robots_known(host.key):
                host.robots_pending = True
                host.active += 1
                host.requests += 1
                host.next_slot = now + self._interval(host.key)
                return host, None, 0, True
            host.queue.popleft()
            host.active += 1
            host.requests += 1
            host.next_slot = now + self._interval(host.key)
            self._hosts.move_to_end(host.key)  # round robin across hosts
            return host, url, attempt, False
        return wait

    def _work(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._closed:
                        return
                    picked = self._pick()
                    if not isinstance(picked, float):
                        break
                    self._cv.wait(picked)
            host, url, attempt, robots_only = picked
            if robots_only:
                started = time.monotonic()
                try:
                    self.fetcher.prefetch_robots(host.key)
                except Exception as e:  # recorded as the host's robots outcome; its URLs report it
                    self.fetcher.set_robots_failure(host.key, "fetch_error", f"robots.txt: {type(e).__name__}: {e}")
                with self._cv:
                    host.active -= 1
                    host.robots_pending = False
                    # robots.txt may ask for a longer Crawl-delay than our rate
                    host.next_slot = max(host.next_slot, started + self._interval(host.key))
                    self._cv.notify_all()
                continue
            try:
                res = self.fetcher.attempt(url)
            except Exception as e:  # a worker thread must never die with the URL still pending
                res = FetchResult(url=url, final_url=url, reason="fetch_error", detail=f"{type(e).__name__}: {e}")
            res.attempts = attempt + 1
            with self._cv:
                host.active -= 1
                if res.reason in _RETRYABLE and attempt < self.cfg.retries:
                    self.retries += 1
                    delay = max(self.cfg.backoff_s * (2**attempt), self._retry_after(res))
                    host.queue.appendleft((url, attempt + 1, time.monotonic() + delay))
                else:
                    self._done.append(res)
                    self._pending -= 1
                self._cv.notify_all()


# ---------------------------------------------------------------------------------------------
# WARC archive of fetched responses


ARCHIVE_DIR = "fetched"  # under the build's output folder
# The names WarcArchive writes, one per bundle; temporaries add ".tmp-<32 hex>" as atomic_write's do.
ARCHIVE_NAME = re.compile(r"^fetched-\d{14}-[0-9a-f]{12}\.warc\.gz$")


class WarcArchive:
    """Appends response records to ``<dir>/fetched-<time>-<id>.warc.gz``, written as
    ``<that>.tmp-<hex>`` and renamed into place on close."""

    def __init__(self, archive_dir: str):
        self.dir = archive_dir
        self.path = ""
        self._fh = None
        self._writer = None

    def _open(self) -> None:
        from warcio.warcwriter import WARCWriter

        os.makedirs(self.dir, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
        self.path = os.path.join(self.dir, f"fetched-{stamp}-{uuid.uuid4().hex[:12]}.warc.gz")
        self._tmp = f"{self.path}.tmp-{uuid.uuid4().hex}"
        self._fh = open(self._tmp, "wb")
        self._writer = WARCWriter(self._fh, gzip=True)

    def write(self, res: FetchResult) -> Provenance:
        """Write one successful response; returns the provenance of its record."""
        from warcio.statusandheaders import StatusAndHeaders

        if self._fh is None:
            self._open()
        drop = {"transfer-encoding", "content-encoding", "content-length"}
        headers = [(k, v) for k, v in res.headers if k.lower() not in drop]
        headers.append(("Content-Length", str(len(res.body))))
        http_headers = StatusAndHeaders(f"{res.status} {res.reason_phrase}".strip(), headers, protocol="HTTP/1.1")
        warc_headers = {"WARC-Date": res.fetched_at, "WARC-IP-Address": res.ip}
        if res.final_url != res.url:
            # Recorded under the URL the documents reference, so a rebuild from the archive joins
            # it to them; where the bytes really came from is kept in an extension field.
            warc_headers["M3W-Final-URI"] = res.final_url
        record = self._writer.create_warc_record(
            res.url,
            "response",
            payload=BytesIO(res.body),
            http_headers=http_headers,
            warc_headers_dict=warc_headers,
        )
        offset = self._fh.tell()
        self._writer.write_record(record)
        self._fh.flush()
        return Provenance(
            warc_filename=self.path,
            warc_record_offset=offset,
            warc_record_length=self._fh.tell() - offset,
            capture_date=res.fetched_at,
            warc_record_id=record.rec_headers.get_header("WARC-Record-ID") or "",
        )

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            os.replace(self._tmp, self.path)
            self._fh = self._writer = None


# ---------------------------------------------------------------------------------------------
# Caps and filters applied before any request


def candidate_window(images: ImageConfig, cfg: FetchConfig) -> int | None:
    """How many of a document's image candidates (DOM order) can be worth a request: as many as
    could be kept plus a margin for ones that fail, never more than the per-document budget."""
    caps = [c for c in (None if images.max_images_per_doc is None else images.max_images_per_doc + cfg.candidate_margin,
                        cfg.max_candidates_per_doc) if c is not None]
    return min(caps) if caps else None


def skip_reason(node: ImageNode, images: ImageConfig, cfg: FetchConfig) -> str:
    """Why the image filters would drop ``node`` whatever its bytes ("" when they may keep it):
    its URL, or its declared size (CSS px, scaled by ``cfg.declared_pixel_ratio``) or shape."""
    from pipeline.images import _url_keyword

    w, h = node.declared_width, node.declared_height
    if images.min_side is not None:
        # 0 is an "auto" placeholder for one side, not a size
        if any(v and v * cfg.declared_pixel_ratio < images.min_side for v in (w, h)):
            return "declared_size"
    if images.max_aspect_ratio is not None and w and h and max(w, h) / min(w, h) > images.max_aspect_ratio:
        return "declared_aspect"
    if _url_keyword(node.url, images.url_keywords) is not None:
        return "url_pattern"
    return ""


def screen_candidates(doc: Document, images: ImageConfig, cfg: FetchConfig) -> Iterator[tuple[str, str]]:
    """(normalised image URL, skip reason or "") once per distinct image URL of ``doc``, in DOM
    order. Screened-out images do not use up the window; every image that may be kept does,
    whether the crawl holds it or not (both fill the document's image cap in DOM order)."""
    window = candidate_window(images, cfg)
    seen: set[str] = set()
    kept = 0
    for node in doc.nodes:
        if not isinstance(node, ImageNode):
            continue
        key = normalize_url(node.url)
        if key in seen:
            continue
        seen.add(key)
        reason = skip_reason(node, images, cfg)
        if not reason:
            kept += 1
            if window is not None and kept > window:
                reason = "over_cap"
        yield key, reason


class _ChooseCandidatesFn(beam.DoFn):
    """(url, {"missing": [None] or [], "refs": [(reason, doc_id, page url, warc, offset), ...]}) →
    (url, (warc, offset) of the first page that may keep it) to fetch (main) when one citing
    document may keep it, else a Reject (``rejects``) with the first citing page's location."""

    def __init__(self) -> None:
        self._skipped = {r: Metrics.counter("m3w", f"{STAGE}.skipped_{r}") for r in SKIP_REASONS}

    def process(self, element):
        url, groups = element
        if not list(groups["missing"]):
            return  # the crawl has it: nothing to fetch
        refs = list(groups["refs"])
        wanting = [r for r in refs if not r[0]]
        if wanting or not refs:
            first = min(wanting, key=lambda r: r[1]) if wanting else ("", "", "", "", -1)
            yield url, (first[3], first[4])
            return
        reason, _, page_url, warc, offset = min(refs, key=lambda r: r[1])  # the first citing page by id
        self._skipped[reason].inc()
        yield pvalue.TaggedOutput(
            "rejects",
            Reject(STAGE, f"skipped_{reason}", url, warc, offset, f"referenced by {len(refs)} document(s), first {page_url}"),
        )


def _screened_refs(doc: Document, images: ImageConfig, cfg: FetchConfig):
    prov = doc.provenance
    for key, reason in screen_candidates(doc, images, cfg):
        yield key, (reason, doc.doc_id, doc.url, prov.warc_filename, prov.warc_record_offset)


# ---------------------------------------------------------------------------------------------
# Beam


class _FetchFn(beam.DoFn):
    """(host key, [(url, (warc, offset) of a citing page), ...]) → ImageRecord (main) + Reject
    (``rejects``, located at the citing page)."""

    def __init__(self, cfg: FetchConfig, archive_dir: str):
        self._cfg = cfg
        self._archive_dir = archive_dir
        self._ok = Metrics.counter("m3w", f"{STAGE}.fetched")
        self._bytes = Metrics.counter("m3w", f"{STAGE}.bytes")
        self._retries = Metrics.counter("m3w", f"{STAGE}.retries")
        self._robots = Metrics.counter("m3w", f"{STAGE}.robots_requests")
        self._dropped = {r: Metrics.counter("m3w", f"{STAGE}.dropped_{r}") for r in REJECT_REASONS}
        self._skipped = {r: Metrics.counter("m3w", f"{STAGE}.skipped_{r}") for r in SKIP_REASONS}

    def setup(self):
        self._engine = FetchEngine(self._cfg)  # robots.txt cache lives as long as the worker
        self._where: dict[str, tuple[str, int]] = {}  # submitted URL -> citing page (WARC file, offset)

    def start_bundle(self):
        self._archive = WarcArchive(self._archive_dir)
        self._retries_seen = self._engine.retries
        self._robots_seen = self._engine.fetcher.robots_requests

    def _emit(self, res: FetchResult):
        warc, offset = self._where.pop(res.url, ("", -1))  # the citing page, for rejects
        if res.reason in self._skipped:
            self._skipped[res.reason].inc()
            return pvalue.TaggedOutput("rejects", Reject(STAGE, f"skipped_{res.reason}", res.url, warc, offset, res.detail))
        if not res.ok:
            self._dropped[res.reason].inc()
            return pvalue.TaggedOutput("rejects", Reject(STAGE, res.reason, res.url, warc, offset, res.detail))
        prov = self._archive.write(res)
        self._ok.inc()
        self._bytes.inc(len(res.body))
        ctype = next((v for k, v in res.headers if k.lower() == "content-type"), "")
        rec = ImageRecord(url=res.url, provenance=prov, data=res.body, content_type=ctype)
        rec.source = "fetch"  # read by ProcessImages to label the resolved image
        return rec

    def process(self, element):
        _, candidates = element
        distinct: dict[str, tuple[str, tuple[str, int]]] = {}
        for url, where in candidates:  # one request per distinct normalised URL
            distinct.setdefault(normalize_url(url), (url, where))
        for url, where in distinct.values():
            self._where[url] = where
            self._engine.submit(url)
            while self._engine.pending > 4 * self._cfg.concurrency:  # bound memory per bundle
                for res in self._engine.results(block=False):
                    yield self._emit(res)
                time.sleep(0.01)
        for res in self._engine.results(block=False):
            yield self._emit(res)

    def finish_bundle(self):
        for res in self._engine.results(block=True):
            out = self._emit(res)
            if isinstance(out, pvalue.TaggedOutput):
                yield pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
            else:
                yield GlobalWindows.windowed_value(out)
        self._archive.close()
        self._retries.inc(self._engine.retries - self._retries_seen)
        self._robots.inc(self._engine.fetcher.robots_requests - self._robots_seen)

    def teardown(self):
        self._engine.close()


class FetchOutputs(NamedTuple):
    images: object  # PCollection[ImageRecord]
    rejects: object  # PCollection[Reject]


class FetchImages(beam.PTransform):
    """``PCollection[str]`` (absolute image URLs), or ``(missing, documents)``: the normalised URLs
    the crawl lacks and the documents citing them → ``FetchOutputs``: ``images`` (ImageRecord),
    ``rejects`` (Reject).

    Given the documents, only candidates the image stage could keep are requested: per document
    the first ``candidate_window`` images in DOM order that pass ``skip_reason``; the rest are
    rejects ``skipped_<reason>``. Every reject is located at a citing page (its WARC file and
    offset; none for bare URLs). Duplicate URLs are fetched once. URLs are grouped by host, so each host's politeness limits and request budget hold
    across the whole run, not per worker. Each image's provenance points at its response record
    in a WARC file under ``archive_dir``.
    """

    def __init__(self, cfg: FetchConfig = FetchConfig(), archive_dir: str = ARCHIVE_DIR, images: ImageConfig = ImageConfig()):
        super().__init__()
        self._cfg = cfg
        self._archive_dir = archive_dir
        self._images = images

    def expand(self, pcoll):
        skipped = []
        if isinstance(pcoll, tuple):
            missing, docs = pcoll
            chosen = (
                {
                    "missing": missing | "KeyMissingUrls" >> beam.Map(lambda u: (u, None)),
                    "refs": docs | "ScreenCandidates" >> beam.FlatMap(_screened_refs, self._images, self._cfg),
                }
                | "GroupCandidatesByUrl" >> beam.CoGroupByKey()
                | "ChooseCandidates" >> beam.ParDo(_ChooseCandidatesFn()).with_outputs("rejects", main="urls")
            )
            urls = chosen.urls
            skipped.append(chosen.rejects)
        else:
            urls = pcoll | "NoCitingPage" >> beam.Map(lambda u: (u, ("", -1)))
        fetched = (
            urls
            | "KeyUrlsByHost" >> beam.Map(lambda c: (host_key(c[0]), c))
            | "GroupUrlsByHost" >> beam.GroupByKey()
            | "FetchPolitely" >> beam.ParDo(_FetchFn(self._cfg, self._archive_dir)).with_outputs("rejects", main="images")
        )
        rejects = fetched.rejects
        if skipped:
            rejects = [fetched.rejects] + skipped | "AllFetchRejects" >> beam.Flatten()
        return FetchOutputs(fetched.images, rejects)
