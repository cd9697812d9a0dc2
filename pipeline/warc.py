"""Read WARC/ARC files into pages, images and counted rejects.

``iter_warc`` streams one file: it never holds more than one record (bounded by
``LimitsConfig.max_record_bytes``) and yields, in file order,

* ``Page`` for each HTTP 200 ``text/html`` / ``application/xhtml+xml`` response (and HTML
  ``resource`` records), holding the raw body, which is resolved and decoded to text
  (``decode_html``) on first access of ``Page.html``;
* ``ImageRecord`` for each HTTP 200 image response or ``resource`` record holding an image
  (``image/*`` Content-Type, or image bytes behind another type);
* ``Reject(stage="read")`` for every response, resource or revisit record that is not kept, and for
  damage in the file (truncated record, bad gzip, bad WARC or HTTP headers, ...).

Records that never carry page content (``warcinfo``, ``request``, ``metadata``, ``conversion``,
``continuation``) are counted in ``stats`` as ``skipped_<type>`` without a ``Reject`` each: they
are most of a crawl's records and nothing in them could become a document.

FastWARC is the fast path. warcio reads what FastWARC cannot: ARC files, WARCs whose header lines
end in a bare LF, and the rest of a file from the last record FastWARC returned when FastWARC
stops with an error or its last record does not end the file whole (which gives that record's
exact length and names the damage where FastWARC stops). After damage, a seekable file is
read on from the next gzip member or header line that starts a record, so one bad stretch costs
the records in it and not the rest of the file. Per-record gzip offsets are those of the gzip
member; for a whole-file gzip WARC they are offsets into the decompressed stream. A record on
warcio's path whose Content-Length does not end at a record boundary is counted as
``length_mismatch`` (warcio's own multi-line stderr warning is silenced).

A Content-Length is a claim the reader checks, never a licence to skip: in an uncompressed file
(and a whole-file gzip one, read through a seekable view of its decompressed bytes) every record
must end where the next header line starts or at the end of the file. One that does not, whether
read or skipped as over ``max_record_bytes``, is a counted reject (``bad_content_length``,
``bad_warc_header``, ``record_too_large``) and reading goes on from the next header line after its
start, so the records a lying length would swallow are still read. Per-record gzip needs no such
check to find the next record: each member starts one.
"""
from __future__ import annotations

import codecs
import collections
import functools
import io
import os
import re
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterator, Union

from pipeline.config import LimitsConfig
from pipeline.records import ImageRecord, Page, Reject
from schemas.document import Provenance

STAGE = "read"

Item = Union[Page, ImageRecord, Reject]

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Types under which servers send bytes of any kind; image or HTML bytes behind them are sniffed.
_GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/unknown", "unknown/unknown"})
_NO_HEADERS: dict[str, str] = {}
_CONTENT_RECORDS = frozenset({"response", "resource", "revisit"})
_KNOWN_TYPES = frozenset({"warcinfo", "request", "metadata", "conversion", "continuation", "unknown"})
WARC_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")

_HEAD_BYTES = 64 << 10  # first read of a block; enough for HTTP headers and format sniffing
_WHOLE_READ_BYTES = 1 << 20  # smaller blocks are read at once; larger ones head first, rest if wanted
_META_SCAN_BYTES = 1024  # WHATWG prescan window for <meta charset>


class InputError(ValueError):
    """An input pattern matched nothing or a path is missing; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Input matching


def match_inputs(patterns: list[str]) -> list[str]:
    """Expand paths, directories, globs and FileSystems URIs (gs://, s3://) into sorted unique files.

    A directory yields every ``*.warc``, ``*.warc.gz``, ``*.arc`` and ``*.arc.gz`` below it.
    Raises ``InputError`` naming the first pattern that matched nothing.
    """
    from apache_beam.io.filesystems import FileSystems

    if not patterns:
        raise InputError("no input given; pass one or more WARC files, directories or globs with --input")
    found: set[str] = set()
    for pattern in patterns:
        matched: list[str] = []
        if "://" not in pattern and os.path.isdir(pattern):
            for root, _dirs, files in os.walk(pattern):
                matched.extend(os.path.join(root, f) for f in files if f.endswith(WARC_SUFFIXES))
            if not matched:
                raise InputError(f"directory {pattern} holds no .warc, .warc.gz, .arc or .arc.gz files; point --input at WARC files")
        else:
            try:
                results = FileSystems.match([pattern])
            except Exception as e:  # Beam raises BeamIOError or ValueError for unknown schemes
                raise InputError(f"cannot list {pattern}: {str(e).splitlines()[0]}; check the path or URI") from None
            for res in results:
                matched.extend(m.path for m in res.metadata_list)
            if not matched:
                if any(c in pattern for c in "*?["):
                    raise InputError(f"pattern {pattern} matched no files; check the glob (quote it so the shell does not expand it)")
                raise InputError(f"input {pattern} does not exist; check the path")
        found.update(matched)
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# Pure per-record helpers


class HttpError(ValueError):
    """The HTTP header block of a response record cannot be parsed."""


_HEADER_LINE_B = re.compile(rb"\n([^:\r\n]+):([^\r\n]*)")
# The reader needs three headers; collecting only them skips most of the per-line Python work.
# Anchored on the newline itself (searched from the end of the status line): cheaper than ``^`` with re.M.
_USED_HEADERS = re.compile(rb"\n[ \t]*(content-type|content-encoding|transfer-encoding)[ \t]*:([^\r\n]*)", re.I)
_ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_CHARSET_PARAM = re.compile(r"charset\s*=\s*[\"']?([^\s;\"']+)", re.I)


def parse_http_headers(block: bytes, only: re.Pattern | None = None) -> tuple[int, dict[str, str], int]:
    """Parse ``HTTP/x.y CODE reason`` and headers at the start of ``block``.

    Returns (status, headers with lower-case names, repeated names joined by ", ", offset of the body).
    ``only`` (a bytes pattern like ``_HEADER_LINE_B``: a newline, then name and value groups) limits
    which header lines are collected.
    """
    # The earliest blank line ends the headers; servers mix CRLF and bare LF. Each later search
    # only looks before the best end found so far, so a CRLF response costs one real scan.
    limit = min(len(block), _HEAD_BYTES)
    end = block.find(b"\r\n\r\n", 0, limit)
    sep = 4
    cut = end if end >= 0 else limit
    at = block.find(b"\n\n", 0, cut)
    if at >= 0:
        end, sep, cut = at, 2, at
    at = block.find(b"\n\r\n", 0, cut)
    if at >= 0:
        end, sep = at, 3
    if end < 0:
        if len(block) < _HEAD_BYTES and block.startswith(b"HTTP/"):
            end, sep = len(block), 0  # headers only, no body
        else:
            raise HttpError("no end of HTTP headers")
    nl = block.find(b"\n", 0, end)
    if nl < 0:
        nl = end
    status_line = block[:nl].decode("latin-1")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].upper().startswith("HTTP/") or not parts[1].isdigit():
        raise HttpError(f"bad status line {status_line.strip()[:80]!r}")
    headers: dict[str, str] = {}
    # Lines without a colon (folded or junk) carry nothing we use and do not match.
    for name, value in (only or _HEADER_LINE_B).findall(block, nl, end):
        name = name.decode("latin-1").strip().lower()
        value = value.decode("latin-1").strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(parts[1]), headers, end + sep


class ChunkedError(ValueError):
    """The body claims chunked transfer encoding but is not validly chunked."""


def decode_chunked(body: bytes, limit: int | None) -> bytes:
    """Undo HTTP/1.1 chunked transfer encoding; raises ChunkedError, or OverflowError past ``limit``."""
    out = []
    total = 0
    pos = 0
    n = len(body)
    while True:
        eol = body.find(b"\n", pos)
        if eol < 0:
            if pos >= n or not body[pos:].strip():
                break  # body ends without the last-chunk marker: keep what arrived
            raise ChunkedError(f"chunk size line cut at byte {pos}")
        size_txt = body[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_txt, 16)
        except ValueError:
            if pos == 0:
                # Many crawlers store the de-chunked body and keep the header; warcio and browsers
                # read such a body as is.
                raise NotChunked() from None
            raise ChunkedError(f"bad chunk size {size_txt[:20]!r} at byte {pos}") from None
        if size < 0:
            raise ChunkedError(f"negative chunk size at byte {pos}")
        if size == 0:
            break  # trailers (if any) follow; nothing in them is content
        start = eol + 1
        if start + size > n:
            raise ChunkedError(f"chunk of {size} bytes at byte {pos} runs past the record end")
        total += size
        if limit is not None and total > limit:
            raise OverflowError(total)
        out.append(body[start : start + size])
        pos = start + size
        if body.startswith(b"\r\n", pos):
            pos += 2
        elif body.startswith(b"\n", pos):
            pos += 1
    return b"".join(out)


class NotChunked(ChunkedError):
    """The body labelled chunked does not start with a chunk size: it was stored de-chunked."""


class EncodingError(ValueError):
    """A Content-Encoding could not be undone."""


MAX_GZIP_MEMBERS = 1000  # a concatenation of gzip members is one body (RFC 1952); more is hostile


def _bounded_zlib(data: bytes, wbits: int, limit: int | None) -> bytes:
    """Inflate ``data`` within ``limit`` output bytes. For gzip (``wbits`` 31) every member of a
    concatenation is inflated, as gunzip does; bytes after the last member that start no member
    are ignored, as browsers do."""
    out = bytearray()
    members = 0
    while True:
        d = zlib.decompressobj(wbits)
        room = (limit + 1 - len(out)) if limit is not None else 0
        out += d.decompress(data, room) if limit is not None else d.decompress(data)
        if limit is not None and len(out) > limit:
            raise OverflowError(len(out))
        if not d.eof:
            raise EncodingError("compressed body is cut short")
        members += 1
        data = d.unused_data
        if wbits != 31 or not data.startswith(b"\x1f\x8b"):
            return bytes(out)
        if members >= MAX_GZIP_MEMBERS:
            raise EncodingError(f"more than {MAX_GZIP_MEMBERS} gzip members")


def decode_content(body: bytes, encoding: str, limit: int | None) -> bytes:
    """Undo Content-Encoding (gzip, deflate, br; stacked in order); OverflowError when output passes ``limit``.

    A body labelled gzip that carries no gzip magic is taken as already decoded: some crawlers store
    the decoded bytes and keep the header.
    """
    for enc in [e.strip().lower() for e in encoding.split(",") if e.strip()][::-1]:
        if enc in ("identity", "none", "utf-8", "utf8", "7bit", "8bit", "binary"):
            continue
        if enc in ("gzip", "x-gzip"):
            if not body.startswith(b"\x1f\x8b"):
                continue
            try:
                body = _bounded_zlib(body, 31, limit)
            except zlib.error as e:
                raise EncodingError(f"gzip: {e}") from None
        elif enc == "deflate":
            try:
                body = _bounded_zlib(body, 15, limit)
            except zlib.error:
                try:
                    body = _bounded_zlib(body, -15, limit)  # raw deflate, as some servers send it
                except zlib.error as e:
                    raise EncodingError(f"deflate: {e}") from None
        elif enc == "br":
            body = _brotli(body, limit)
        else:
            raise EncodingError(f"unsupported Content-Encoding {enc!r}")
    return body


def _brotli(data: bytes, limit: int | None) -> bytes:
    import brotli

    d = brotli.Decompressor()
    step = (limit + 1) if limit is not None else 1 << 30
    try:
        out = [d.process(data, output_buffer_limit=step)]
        total = len(out[0])
        while not d.is_finished():
            if limit is not None and total > limit:
                raise OverflowError(total)
            more = d.process(b"", output_buffer_limit=step)
            if not more:
                break
            out.append(more)
            total += len(more)
    except brotli.error as e:
        raise EncodingError(f"br: {e}") from None
    if limit is not None and total > limit:
        raise OverflowError(total)
    if not d.is_finished():
        raise EncodingError("br: compressed body is cut short")
    return b"".join(out)


_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
)


def sniff_image(data: bytes) -> str:
    """The image MIME type the leading bytes show, or "" when they are not a known raster format."""
    for magic, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            if mime == "image/bmp" and len(data) < 26:
                return ""
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1"):
        return "image/avif" if data[8:11] == b"avi" else "image/heic"
    return ""


_HTML_START = re.compile(rb"^\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)[\s>]", re.I | re.S)


def sniff_html(data: bytes) -> bool:
    """Whether the bytes start like an HTML document (for responses with no or a generic type)."""
    return bool(_HTML_START.match(data[:1024].lstrip(b"\xef\xbb\xbf")))


_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.I)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


@functools.lru_cache(maxsize=512)
def _html5_name(label: str) -> str | None:
    from resiliparse.parse.encoding import map_encoding_to_html5

    return map_encoding_to_html5(label.strip().strip("\"'"), fallback_utf8=False)


def decode_html(body: bytes, header_charset: str = "") -> tuple[str, str]:
    """Bytes to text: BOM, then the HTTP charset, then ``<meta charset>``/http-equiv, then detection.

    Returns (text, "<source>:<encoding>") with source one of bom, header, meta, detected. A declared
    charset that does not decode the bytes falls through to the next source.
    """
    for bom, enc in _BOMS:
        if body.startswith(bom):
            return body[len(bom) :].decode(enc, errors="replace"), f"bom:{enc}"
    if header_charset:
        enc = _html5_name(header_charset)
        if enc:
            try:
                return body.decode(enc), f"header:{enc}"
            except (UnicodeDecodeError, LookupError):
                pass  # mislabelled; try the page's own declaration
    m = _META_CHARSET.search(body, 0, _META_SCAN_BYTES)
    if m:
        enc = _html5_name(m.group(1).decode("ascii", "replace"))
        if enc:
            try:
                return body.decode(enc), f"meta:{enc}"
            except (UnicodeDecodeError, LookupError):
                pass
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    enc = detect_encoding(body, max_len=64 << 10)
    return bytes_to_str(body, enc, errors="replace"), f"detected:{enc}"


def _iso_date(value: str) -> str:
    """WARC-Date (or an ARC 14-digit date) as ISO 8601 UTC; unparseable values are kept as given."""
    v = value.strip()
    if _ISO_Z.fullmatch(v):
        return v  # the common case, already canonical
    if not v:
        return ""
    if len(v) >= 14 and v[:14].isdigit():
        try:
            return datetime.strptime(v[:14], "%Y%m%d%H%M%S").strftime("%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            return v
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return v
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    return dt.isoformat(timespec="seconds") + "Z"


def _clean_uri(uri: str) -> str:
    uri = uri.strip()
    if uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1]  # WARC/0.17 and some WARC/1.1 writers wrap the URI in <>
    return uri.replace(" ", "%20")


# ---------------------------------------------------------------------------------------------
# Raw records, as the two backends see them


@dataclass(slots=True)
class _Raw:
    """One WARC record's headers and (for content records) its bytes, read before the reader moves on."""

    rtype: str
    offset: int
    length: int
    content_length: int
    uri: str = ""
    date: str = ""
    record_id: str = ""
    warc_content_type: str = ""
    payload_digest: str = ""
    refers_to_uri: str = ""
    warc_truncated: str = ""
    block: bytes | None = None  # None: not read (no content wanted, or over the record limit)
    short_read: bool = False  # fewer bytes than Content-Length: the file is cut inside this record
    too_large: bool = False
    bad_frame: str = ""  # reason when the record does not end at a record boundary (checked where the file allows)
    resync: int = -1  # where to look for the next record instead of offset + Content-Length
    declared: int = -1  # Content-Length as the header gives it (``content_length`` may be reset once read)
    reason: str = ""  # set on a placeholder for damage in the file
    detail: str = ""


class _ForwardStream(io.RawIOBase):
    """A forward-only stream that counts the bytes it hands out (``count``) as its position.

    FastWARC asks for the position through ``seek``: only no-op seeks are possible here.
    Subclasses implement ``read``.
    """

    count = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.count

    def seek(self, offset: int, whence: int = 0) -> int:
        if (whence == 0 and offset == self.count) or (whence == 1 and offset == 0):
            return self.count
        raise io.UnsupportedOperation("seek")

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class _CountingReader(_ForwardStream):
    """Serves ``prefix`` and then ``raw``; counts bytes handed out so the end offset is known."""

    def __init__(self, raw, prefix: bytes = b"", base: int = 0):
        self._raw = raw
        self._prefix = prefix
        self.count = base

    def read(self, n: int = -1) -> bytes:
        if self._prefix:
            if n is None or n < 0:
                data = self._prefix + self._raw.read()
                self._prefix = b""
            else:
                data = self._prefix[:n]
                self._prefix = self._prefix[n:]
        else:
            data = self._raw.read(n) if n is not None and n >= 0 else self._raw.read()
        self.count += len(data)
        return data


class _GunzipReader(_ForwardStream):
    """Multi-member gunzip over a raw stream, for whole-file gzip WARCs (offsets then are uncompressed)."""

    def __init__(self, raw):
        self._raw = raw
        self._d = zlib.decompressobj(31)
        self._buf = b""
        self._eof = False
        self._in_member = False
        self.truncated = False
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        want = n if n is not None and n >= 0 else 1 << 62
        while len(self._buf) < want and not self._eof:
            chunk = self._d.unconsumed_tail or self._raw.read(64 << 10)
            if not chunk:
                # A member cut short: hand out what was decoded; the caller reports the damage.
                self.truncated = self._in_member and not self._d.eof
                self._eof = True
                break
            self._in_member = True
            self._buf += self._d.decompress(chunk, 256 << 10)
            if self._d.eof:
                rest = self._d.unused_data
                self._d = zlib.decompressobj(31)
                self._in_member = bool(rest)
                if rest:
                    self._buf += self._d.decompress(rest, 256 << 10)
        out, self._buf = self._buf[:want], self._buf[want:]
        self.count += len(out)
        return out


class _SeekableGunzip(io.RawIOBase):
    """The decompressed bytes of a seekable multi-member gzip file, seekable: a whole-file gzip WARC
    then reads like an uncompressed one (offsets are uncompressed, damage resyncs at the next
    header line). Decompressor snapshots every ``STEP`` bytes of output make a backward seek cost
    at most ``STEP`` of re-inflation; the last ``KEEP`` bytes before the read position are kept
    for the short backward seeks of a probe. Corrupt or cut deflate data ends the stream there
    (``damage`` names it)."""

    STEP = 2 << 20  # a snapshot is ~45 KB: ~22 MB of them per GB of decompressed data
    KEEP = 1 << 20

    def __init__(self, raw):
        self._raw = raw
        self._marks: list[tuple[int, int, object]] = [(0, 0, None)]  # (out offset, in offset, decompressor)
        self._pos = 0
        self._size: int | None = None  # known once the end has been reached
        self.damage = ""
        self._restore(self._marks[0])

    def _restore(self, mark) -> None:
        out, inp, d = mark
        self._d = d.copy() if d is not None else zlib.decompressobj(31)
        self._in_member = d is not None
        self._in, self._out, self._tail = inp, out, b""
        self._win, self._win_start = b"", out
        self._eof = False
        self._raw.seek(inp)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._pos
        elif whence == 2:
            if self._size is None:
                self._pos = 1 << 62
                self.read(1)
            offset += self._size or 0
        self._pos = max(0, offset)
        return self._pos

    def _more(self, keep_from: int) -> bool:
        """Inflate the next piece of output into the window; False at the end of the data."""
        if self._eof:
            return False
        while True:
            data = self._tail or self._raw.read(64 << 10)
            if not data:
                if self._in_member:
                    self.damage = self.damage or "gzip stream ends inside a member"
                self._eof = True
                self._size = self._out
                return False
            if not self._tail:
                self._in += len(data)
            try:
                chunk = self._d.decompress(data, 256 << 10)
            except zlib.error as e:
                self.damage = f"gzip: {e}"
                self._eof = True
                self._size = self._out
                return False
            self._in_member = True
            self._tail = self._d.unconsumed_tail
            if self._d.eof:
                self._d, self._tail = zlib.decompressobj(31), self._d.unused_data + self._tail
                self._in_member = False
            if chunk:
                break
        before = self._out
        self._out += len(chunk)
        self._win += chunk
        drop = keep_from - self.KEEP - self._win_start
        if drop > len(self._win) // 2:  # trim in large steps: each trim copies the window
            drop = min(drop, len(self._win))
            self._win, self._win_start = self._win[drop:], self._win_start + drop
        if self._out // self.STEP > before // self.STEP:
            self._marks.append((self._out, self._in - len(self._tail), self._d.copy()))
        return True

    def read(self, n: int = -1) -> bytes:
        pos = self._pos
        if self._size is not None and pos >= self._size:
            return b""
        if pos < self._win_start or pos > self._out + self.STEP:
            best = max((m for m in self._marks if m[0] <= pos), key=lambda m: m[0])
            if pos < self._win_start or best[0] > self._out:
                self._restore(best)
        want = pos + (n if n is not None and n >= 0 else 1 << 62)
        while self._out < want and self._more(pos):
            pass
        if pos >= self._out:
            return b""
        out = self._win[pos - self._win_start : want - self._win_start]
        self._pos += len(out)
        return out

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _is_whole_file_gzip(stream) -> bool:
    """Whether a gzip WARC holds more than one record in its first member (one gzip stream for the
    whole file, or for several records), rather than one member per record."""
    stream.seek(0)
    d = zlib.decompressobj(31)
    out = b""
    cap = 1 << 20
    try:
        while not d.eof and len(out) < cap:
            chunk = d.unconsumed_tail or stream.read(64 << 10)
            if not chunk:
                break
            out += d.decompress(chunk, cap - len(out))
    except zlib.error:
        return False
    finally:
        stream.seek(0)
    end = out.find(b"\r\n\r\n")
    at = out.find(b"\nWARC/", end) if end >= 0 else -1
    return at >= 0 and _looks_like_record(out[at + 1 : at + 8192], "warc")


def _read_full(read: Callable[[int], bytes], n: int) -> bytes:
    """Read ``n`` bytes or up to EOF (warcio's readers return short reads at buffer edges)."""
    first = read(n)
    if len(first) >= n or not first:
        return first
    parts = [first]
    got = len(first)
    while got < n:
        more = read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _damage_reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if isinstance(exc, (EOFError,)) or "truncat" in text or "end of stream" in text:
        return "truncated_record"
    if isinstance(exc, zlib.error) or "gzip" in text or "compress" in text or "\x1f\x8b" in text or "\\x1f\\x8b" in text:
        return "bad_gzip"
    if "header" in text or "archive format" in text or "warc" in text:
        return "bad_warc_header"
    return "read_error"


# ---------------------------------------------------------------------------------------------
# The reader


@functools.cache
def _quiet_archive_iterator() -> type:
    """warcio's iterator without its multi-line stderr warning per record whose Content-Length
    misses the record boundary; ``err_count`` still counts them. Imported on first use: warcio
    pulls in fsspec and asyncio (a quarter second before `build-m3w extract` reads a page)."""
    from warcio.archiveiterator import ArchiveIterator

    class _QuietArchiveIterator(ArchiveIterator):
        INC_RECORD = ""

    return _QuietArchiveIterator


class _FileReader:
    """State for reading one file: name, limits, counters and the revisit index."""

    def __init__(self, name: str, limits: LimitsConfig, stats: collections.Counter, start: int = 0, end: int | None = None):
        self.name = name
        self.limits = limits
        self.stats = stats
        self.seen_digests: dict[str, str] = {}
        self.seen_uris: set[str] = set()
        # A byte range of the file: the records that start in [start, end) (see ``split_ranges``).
        self.start, self.end = start, end
        self._stream = None
        self._prefix_read = start == 0  # revisit index of the records before ``start``, read when first needed

    # -- reading a record's block, shared by both backends ------------------------------------

    def _fill(self, raw: _Raw, read: Callable[[int], bytes]) -> None:
        """Read the block of a content record (bounded) into ``raw`` before the backend moves on."""
        if raw.rtype not in ("response", "resource"):
            return
        limit = self.limits.max_record_bytes
        if limit is not None and raw.content_length > limit:
            raw.too_large = True
            return
        if 0 <= raw.content_length <= _WHOLE_READ_BYTES:
            raw.block = _read_full(read, raw.content_length)  # one read, no second copy
            raw.short_read = len(raw.block) < raw.content_length
            return
        head = _read_full(read, min(_HEAD_BYTES, raw.content_length) if raw.content_length >= 0 else _HEAD_BYTES)
        if len(head) < _HEAD_BYTES or len(head) >= raw.content_length:
            raw.block = head
        elif self._wants_body(raw, head):
            remaining = raw.content_length - len(head)
            raw.block = head + _read_full(read, remaining)
        else:
            raw.block = head  # kind is decided from the head; the rest is never needed
            raw.content_length = -1  # do not treat the unread rest as a short read
            return
        if raw.content_length >= 0 and len(raw.block) < raw.content_length:
            raw.short_read = True

    def _wants_body(self, raw: _Raw, head: bytes) -> bool:
        if raw.rtype == "resource" or not head.startswith(b"HTTP/"):
            ct = raw.warc_content_type.split(";")[0].strip().lower()
            return ct in HTML_TYPES or ct.startswith("image/") or ct in _GENERIC_TYPES
        try:
            _status, headers, body_at = parse_http_headers(head, _USED_HEADERS)
        except HttpError:
            return False
        ct = headers.get("content-type", "").split(";")[0].strip().lower()
        if ct in HTML_TYPES or ct.startswith("image/"):
            return True
        if "content-encoding" in headers or "chunked" in headers.get("transfer-encoding", "").lower():
            return ct in _GENERIC_TYPES or ct == "text/plain"
        body = head[body_at:]
        return bool(sniff_image(body)) or (ct in _GENERIC_TYPES and sniff_html(body))

    # -- backends ---------------------------------------------------------------------------

    def read(self, stream) -> Iterator[Item]:
        """All items of one opened raw stream (the file's bytes as stored)."""
        seekable = _seekable(stream)
        prefix = stream.read(4096)
        head = prefix
        if prefix[:2] == b"\x1f\x8b":
            try:
                head = zlib.decompressobj(31).decompress(prefix, 512)
            except zlib.error as e:
                yield self._reject("bad_gzip", Provenance(self.name, 0, -1, ""), detail=str(e))
                return
        if not prefix:
            yield self._reject("empty_file", Provenance(self.name, 0, 0, ""))
            return
        first_line = head.split(b"\n", 1)[0]
        use_fastwarc = first_line.startswith(b"WARC/") and first_line.endswith(b"\r")
        if seekable:
            stream.seek(0)
            reader = _CountingReader(stream)
        else:
            reader = _CountingReader(stream, prefix)
        gz = prefix[:2] == b"\x1f\x8b"
        arc = first_line.startswith(b"filedesc://")
        if gz and seekable and not arc and _is_whole_file_gzip(stream):
            # One gzip stream over many records: read its decompressed bytes as an uncompressed WARC.
            stream = _SeekableGunzip(stream)
            gz = False
        if not (seekable and splittable_kind(gz, arc, isinstance(stream, _SeekableGunzip))):
            if self.start > 0:
                return  # read whole by the range that starts at 0
            self.end = None
        self._stream = stream
        first = 0
        if self.start > 0:
            found = _next_record_start(stream, self.start, gz, "warc" if use_fastwarc else "warc_lf")
            if found is None or (self.end is not None and found >= self.end):
                return  # no record starts in this range
            first = found
        if use_fastwarc and seekable:
            runs = self._resyncing(
                stream, gz, "warc", lambda base: self._fastwarc(_CountingReader(stream, base=base), stream, base=base), first
            )
        elif use_fastwarc:
            runs = self._fastwarc(reader, None)
        elif seekable:
            kind = "arc" if arc else "warc_lf"
            runs = self._resyncing(stream, gz, kind, lambda base: self._warcio(_CountingReader(stream), base=base, arc=arc), first)
        else:
            runs = self._warcio(reader, base=0, arc=arc)
        yield from self._convert_all(runs)
        if isinstance(stream, _SeekableGunzip) and stream.damage:
            yield self._reject("bad_gzip", Provenance(self.name, stream.tell(), -1, ""), detail=stream.damage)

    def _convert_all(self, raws: Iterator[_Raw]) -> Iterator[Item]:
        convert = self.convert
        for raw in raws:
            item = convert(raw)
            if item is not None:
                yield item

    def _resyncing(self, stream, gz: bool, kind: str, run: Callable[[int], Iterator[_Raw]], base: int = 0) -> Iterator[_Raw]:
        """``run(base)`` over a seekable file from ``base``; after damage, again from the next record
        start found (``kind``: "warc", "warc_lf" or "arc"), until the end of the file or of the
        range (``self.end``): a record or damage that starts at or after it belongs to the next range."""
        end = self.end if self.end is not None else 1 << 62
        held: _Raw | None = None  # damage report, kept until we know whether the next run pins it down
        # Uncompressed records are checked against the next boundary as they are parsed (``_framed``).
        self._frame_stream = stream if not gz and kind in ("warc", "warc_lf") else None
        while True:
            damage: _Raw | None = None
            last: _Raw | None = None
            resync_from = -1
            stream.seek(base)
            for raw in run(base):
                if raw.offset >= end:
                    base = end
                    break
                if raw.reason:
                    damage = raw
                    continue
                if held is not None:
                    yield held
                    held = None
                yield raw
                if raw.resync >= 0:  # the backend stopped at a record whose length is not a boundary
                    resync_from = raw.resync
                    break
                last = raw
            if base >= end:
                break
            if resync_from >= 0:
                base = self._resync(stream, resync_from, gz, kind)
                if base >= end:
                    break
                continue
            if damage is None and last is not None and last.short_read:
                # A corrupt gzip member can end both readers quietly inside a record; that record
                # is rejected as truncated, and reading goes on after it.
                base = self._resync(stream, last.offset + 1, gz, kind)
                if base >= end:
                    break
                continue
            if damage is None:
                break
            if held is not None and damage.offset != base:
                yield held
            held = damage  # one damaged stretch, reported once at its most precise offset
            base = self._resync(stream, max(damage.offset, base) + 1, gz, kind)
            if base >= end:
                break
        if held is not None:
            yield held

    def _resync(self, stream, at: int, gz: bool, kind: str) -> int:
        """The next record start at or after ``at`` (counted as a resync), or past any end when none."""
        nxt = _next_record_start(stream, at, gz, kind)
        if nxt is None:
            return 1 << 62
        self.stats["resynced_after_damage"] += 1
        return nxt

    _frame_stream = None  # the seekable uncompressed stream being read, while records are checked

    def _framed(self, raw: _Raw) -> bool:
        """Whether ``raw`` fails the boundary check (then ``raw.resync`` says where to read on)."""
        if raw.declared < 0:
            return False
        frame, gap = _frame_damage(self._frame_stream, raw)
        if not frame and gap < 0:
            return False
        raw.bad_frame = "" if raw.too_large or raw.short_read else frame
        raw.resync = gap if gap >= 0 else raw.offset + 1
        raw.length = gap - raw.offset if gap >= 0 else -1
        return True

    def _fastwarc(
        self, reader: _CountingReader, seekable_stream, *, gunzip: bool = False, skip: int = 0, base: int = 0
    ) -> Iterator[_Raw]:
        """Records via FastWARC from ``reader``, which starts at ``base`` in the file."""
        from fastwarc.warc import ArchiveIterator

        pending: _Raw | None = None
        error: BaseException | None = None
        emitted = 0
        source = _GunzipReader(reader) if gunzip else reader
        try:
            for rec in ArchiveIterator(source, parse_http=False, strict_mode=False):
                pos = rec.stream_pos  # absolute: FastWARC asks the reader, which counts from ``base``
                if pending is not None:
                    if pos <= pending.offset and not gunzip and base == 0:
                        # Several records per gzip member: a whole-file gzip. Offsets must be unique,
                        # so re-read it decompressed ourselves, where offsets are uncompressed.
                        if seekable_stream is not None:
                            seekable_stream.seek(0)
                            yield from self._fastwarc(_CountingReader(seekable_stream), None, gunzip=True, skip=emitted)
                            return
                    pending.length = pos - pending.offset
                    if emitted >= skip:
                        yield pending
                    emitted += 1
                pending = self._raw_from_fastwarc(rec, pos)
                if self._frame_stream is not None and self._framed(pending):
                    if emitted >= skip:
                        yield pending
                    if pending.resync > pending.offset + 1:
                        yield _Raw("damage", pending.resync, -1, -1, reason="bad_warc_header", detail="no WARC record starts after the previous one")
                    return  # offset + Content-Length is no record start: the caller resyncs
        except _PANIC as e:  # FastWARC raises OSError/ValueError on a bad header, a Rust panic on worse; gunzip EOFError/zlib.error
            error = e
        if pending is None and error is None:
            return
        if seekable_stream is not None and not gunzip and error is None and pending is not None:
            # The common case: the last record is whole and ends the file, so its length is known
            # without a second reader.
            length = _whole_last_record(seekable_stream, pending.offset)
            if length is not None:
                pending.length = length
                if emitted >= skip:
                    yield pending
                return
        if seekable_stream is not None and not gunzip:
            # Re-read from the last record FastWARC returned with warcio: gives that record's true
            # length and recovers (or names the damage in) whatever follows where FastWARC stopped.
            resume = pending.offset if pending is not None else base
            seekable_stream.seek(resume)
            tail = self._warcio(_CountingReader(seekable_stream), base=resume)
            first = next(tail, None)
            if pending is not None:
                if first is not None and first.offset == resume and not first.reason:
                    pending.length = first.length
                    pending.bad_frame, pending.resync = first.bad_frame, first.resync
                    first = None
                else:
                    pending.length = max(reader.count - pending.offset, -1)
                if emitted >= skip:
                    yield pending
            if first is not None:
                yield first
            yield from tail
            return
        if pending is not None:
            pending.length = reader.count - pending.offset if error is None else -1
            if emitted >= skip:
                yield pending
        if error is None and gunzip and source.truncated:
            error = EOFError("gzip stream ends inside a member")
        if error is not None:
            at = pending.offset if pending is not None else base
            yield _Raw("damage", at, -1, -1, reason=_damage_reason(error), detail=str(error)[:200])

    def _raw_from_fastwarc(self, rec, pos: int) -> _Raw:
        rtype = _FASTWARC_TYPES.get(int(rec.record_type), "unknown")
        raw = _Raw(rtype, pos, -1, rec.content_length, declared=rec.content_length)
        if rtype in _CONTENT_RECORDS:  # other records are only counted: skip their headers
            # One pass over the headers is cheaper than a HeaderMap.get per name.
            h = {k.lower(): v for k, v in rec.headers.items()}
            raw.uri = h.get("warc-target-uri", "")
            raw.date = h.get("warc-date", "")
            raw.record_id = h.get("warc-record-id", "")
            raw.warc_content_type = h.get("content-type", "")
            raw.payload_digest = h.get("warc-payload-digest", "")
            raw.warc_truncated = h.get("warc-truncated", "")
            raw.refers_to_uri = h.get("warc-refers-to-target-uri", "")
            self._fill(raw, rec.reader.read)
        return raw

    def _warcio(self, reader: _CountingReader, base: int, arc: bool = False) -> Iterator[_Raw]:
        """Records via warcio from the reader's start, which is at ``base`` in the file; damage ends it."""
        next_offset = base  # where the record being read starts
        try:
            it = _quiet_archive_iterator()(reader, arc2warc=True, no_record_parse=True, check_digests=False)
            for rec in it:
                if it.err_count:  # the previous record's Content-Length did not end at a record boundary
                    self.stats["length_mismatch"] += it.err_count
                    it.err_count = 0
                h = rec.rec_headers
                if rec.length is None and not arc and rec.rec_headers.headers:
                    # Without Content-Length warcio would read to the end of the file as one
                    # record; a damaged header looks like this, so stop here and resynchronise.
                    yield _Raw("damage", next_offset, -1, -1, reason="bad_warc_header", detail="record without Content-Length")
                    return
                rtype = rec.rec_type or "unknown"
                declared = int(rec.length) if rec.length is not None else -1
                raw = _Raw(
                    rtype,
                    -1,
                    -1,
                    declared,
                    declared=declared,
                    uri=h.get_header("WARC-Target-URI") or "",
                    date=h.get_header("WARC-Date") or "",
                    # ARC records have no id; warcio invents a random one, which would break determinism.
                    record_id="" if arc else h.get_header("WARC-Record-ID") or "",
                )
                if rtype in _CONTENT_RECORDS:
                    raw.warc_content_type = h.get_header("Content-Type") or ""
                    raw.payload_digest = h.get_header("WARC-Payload-Digest") or ""
                    raw.warc_truncated = h.get_header("WARC-Truncated") or ""
                    raw.refers_to_uri = h.get_header("WARC-Refers-To-Target-URI") or ""
                    self._fill(raw, rec.raw_stream.read)
                if self._frame_stream is not None and not arc:
                    raw.offset = base + it.offset  # where this record's header starts
                    if self._framed(raw):
                        yield raw
                        if raw.resync > raw.offset + 1:
                            yield _Raw("damage", raw.resync, -1, -1, reason="bad_warc_header", detail="no WARC record starts after the previous one")
                        return  # offset + Content-Length is no record start: the caller resyncs
                it.read_to_end(rec)  # offset and length are known only once the record is consumed
                if it.err_count:  # this record's Content-Length does not end at a record boundary
                    self.stats["length_mismatch"] += it.err_count
                    it.err_count = 0
                    raw.bad_frame = "bad_content_length" if rtype in ("response", "resource") else ""
                raw.offset = base + it.get_record_offset()
                raw.length = it.get_record_length()
                next_offset = raw.offset + raw.length
                yield raw
        except _PANIC as e:  # warcio raises ArchiveLoadFailed, zlib.error, EOFError, ValueError...
            yield _Raw("damage", next_offset, -1, -1, reason=_damage_reason(e), detail=str(e).strip()[:200])

    # -- record → item ------------------------------------------------------------------------

    def _reject(self, reason: str, prov: Provenance, url: str = "", detail: str = "") -> Reject:
        return Reject.of(STAGE, reason, prov, url=url, detail=detail)

    def convert(self, raw: _Raw) -> Item | None:
        """One raw record to a Page, ImageRecord or Reject, or None for skipped types (only counted)."""
        if raw.rtype == "damage":
            return self._reject(raw.reason, Provenance(self.name, raw.offset, -1, ""), detail=raw.detail)
        self.stats["records"] += 1
        if raw.bad_frame:
            # The reader resynchronised after this record: it is counted whatever its type.
            prov = Provenance(self.name, raw.offset, raw.length, _iso_date(raw.date), raw.record_id.strip())
            detail = f"Content-Length {raw.declared} does not end at a record boundary"
            return self._reject(raw.bad_frame, prov, _clean_uri(raw.uri), detail)
        if raw.rtype not in _CONTENT_RECORDS:
            self.stats[f"skipped_{raw.rtype if raw.rtype in _KNOWN_TYPES else 'unknown'}"] += 1
            return None
        url = _clean_uri(raw.uri)
        prov = Provenance(self.name, raw.offset, raw.length, _iso_date(raw.date), raw.record_id.strip())
        if raw.rtype == "revisit":
            return self._revisit(raw, url, prov)
        if raw.too_large:
            return self._reject("record_too_large", prov, url, f"{raw.content_length} bytes")
        if raw.short_read:
            return self._reject("truncated_record", prov, url, f"{len(raw.block or b'')} of {raw.content_length} bytes")
        block = raw.block or b""
        status = 200
        is_http = raw.rtype == "response" and block.startswith(b"HTTP/")
        if is_http:
            try:
                status, headers, body_at = parse_http_headers(block, _USED_HEADERS)
            except HttpError as e:
                return self._reject("bad_http_headers", prov, url, str(e))
            ctype = headers.get("content-type", "")
        elif raw.rtype == "response" and url.lower().startswith(("http:", "https:")) and "application/http" in raw.warc_content_type.lower():
            return self._reject("bad_http_headers", prov, url, f"block starts {block[:40]!r}")
        elif raw.rtype == "response" and "application/http" in raw.warc_content_type.lower():
            # dns:, whois:, ftp: captures (ARC files label them all HTTP) carry no web page.
            return self._reject("not_html_or_image", prov, url, url.split(":", 1)[0] + " record")
        else:  # resource records, and ARC/old responses without HTTP headers
            headers = _NO_HEADERS
            ctype = raw.warc_content_type
            body_at = 0
        self._remember(raw, url)
        mime, _, params = ctype.partition(";")
        mime = mime.strip().lower()
        if status != 200:
            return self._reject("http_status", prov, url, f"{status} {mime}".strip())
        if headers:
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            encoding = headers.get("content-encoding", "").strip()
            if encoding.lower() in ("identity", "none"):
                encoding = ""
        else:
            chunked, encoding = False, ""
        # The body stays a view into the block: a copy of every body would cost about as much
        # as FastWARC's whole read. Decoding steps below return new bytes.
        body = memoryview(block)[body_at:] if body_at else block
        # Decide the kind from the type before undoing any encoding, so nothing else is decoded.
        if mime in HTML_TYPES:
            kind = "html"
        elif mime.startswith("image/"):
            kind = "image"
        elif mime in _GENERIC_TYPES:
            kind = "sniff"
        elif not chunked and not encoding and sniff_image(block[body_at : body_at + 32]):
            kind = "image"  # image bytes behind a wrong type (text/plain, application/x-...)
        else:
            return self._reject("not_html_or_image", prov, url, mime or "no content type")
        if chunked:
            try:
                body = decode_chunked(bytes(body), self.limits.max_record_bytes)
            except NotChunked:
                self.stats["chunked_header_on_plain_body"] += 1
            except ChunkedError as e:
                return self._reject("bad_chunked_encoding", prov, url, str(e))
            except OverflowError:
                return self._reject("record_too_large", prov, url, "chunked body over max_record_bytes")
        if encoding:
            limit = {"html": self.limits.max_html_bytes, "image": self.limits.max_image_bytes}.get(kind, self.limits.max_record_bytes)
            try:
                body = decode_content(bytes(body), encoding, limit)
            except OverflowError:
                reason = {"html": "html_too_large", "image": "image_too_large"}.get(kind, "record_too_large")
                return self._reject(reason, prov, url, f"decoded body over {limit} bytes")
            except EncodingError as e:
                return self._reject("bad_content_encoding", prov, url, str(e))
        if kind == "sniff":
            head = bytes(body[:1024])
            kind = "image" if sniff_image(head) else ("html" if sniff_html(head) else "")
            if not kind:
                return self._reject("not_html_or_image", prov, url, mime or "no content type")
        if kind == "html":
            if self.limits.max_html_bytes is not None and len(body) > self.limits.max_html_bytes:
                return self._reject("html_too_large", prov, url, f"{len(body)} bytes")
            m = _CHARSET_PARAM.search(params) if params else None
            self.stats["html_pages"] += 1
            # Charset resolution and decoding happen on first use of Page.html (decode_html).
            return Page.from_body(url, prov, body, m.group(1) if m else "")
        if self.limits.max_image_bytes is not None and len(body) > self.limits.max_image_bytes:
            return self._reject("image_too_large", prov, url, f"{len(body)} bytes")
        if raw.warc_truncated:
            return self._reject("truncated_image", prov, url, f"WARC-Truncated: {raw.warc_truncated}")
        if not body:
            return self._reject("empty_image", prov, url)
        self.stats["images"] += 1
        data = bytes(body)  # images travel on as bytes (hashing, decoding, shuffles)
        return ImageRecord(url=url, provenance=prov, data=data, content_type=sniff_image(data) or mime)

    def _remember(self, raw: _Raw, url: str) -> None:
        cap = self.limits.max_revisit_index
        if cap is not None and len(self.seen_uris) >= cap:
            return  # bounds memory on giant files; later revisits of unseen originals stay unresolved
        self.seen_uris.add(url)
        if raw.payload_digest:
            self.seen_digests.setdefault(raw.payload_digest.strip(), url)

    def _read_prefix(self) -> None:
        """Adds the revisit index of the records before this range (as the whole-file read has it
        there) to this range's own: read once, when a revisit is not resolved inside the range."""
        self._prefix_read = True
        stream = self._stream
        pos = stream.tell()
        try:
            stream.seek(0)
            before = _FileReader(self.name, self.limits, collections.Counter(), 0, self.start)
            for _ in before.read(stream):
                pass
        finally:
            stream.seek(pos)
        self.seen_digests = {**self.seen_digests, **before.seen_digests}  # the earlier capture wins
        self.seen_uris |= before.seen_uris

    def _revisit(self, raw: _Raw, url: str, prov: Provenance) -> Reject:
        if not self._prefix_read and not self._resolves(raw, url):
            self._read_prefix()
        return self._revisit_in_index(raw, url, prov)

    def _resolves(self, raw: _Raw, url: str) -> bool:
        digest = raw.payload_digest.strip()
        refers = _clean_uri(raw.refers_to_uri) if raw.refers_to_uri else url
        return bool(digest and digest in self.seen_digests) or refers in self.seen_uris

    def _revisit_in_index(self, raw: _Raw, url: str, prov: Provenance) -> Reject:
        digest = raw.payload_digest.strip()
        original = self.seen_digests.get(digest) if digest else None
        refers = _clean_uri(raw.refers_to_uri) if raw.refers_to_uri else url
        if original is None and refers in self.seen_uris:
            original = refers
        if original is not None:
            return self._reject("revisit_duplicate", prov, url, f"original {original}")
        return self._reject("revisit_unresolved", prov, url, f"original {refers} not in this file")


def _panic_type() -> tuple[type[BaseException], ...]:
    # pyo3 turns a Rust panic inside FastWARC into PanicException, a BaseException subclass.
    import fastwarc.warc  # noqa: F401  (creates the pyo3_runtime module)
    import sys

    panic = getattr(sys.modules.get("pyo3_runtime"), "PanicException", None)
    return (Exception, panic) if panic is not None else (Exception,)


_PANIC = _panic_type()


_GZIP_MEMBER = b"\x1f\x8b\x08"
_WARC_START = b"WARC/"


_ARC_HEADER = re.compile(rb"[a-z][a-z0-9+.\-]*:\S* \S+ \d{14} \S* \d+\r?\n")
_FIND_START = {
    "warc": re.compile(rb"\nWARC/"),
    "warc_lf": re.compile(rb"\nWARC/"),
    "arc": re.compile(rb"\n(?=[a-z][a-z0-9+.\-]*:\S* \S+ \d{14} )"),
    "gz": re.compile(re.escape(_GZIP_MEMBER)),
}


def _looks_like_record(probe: bytes, kind: str) -> bool:
    if kind == "arc":
        return bool(_ARC_HEADER.match(probe))
    line_end = b"\r\n" if kind == "warc" else b"\n"
    return probe.startswith(_WARC_START) and line_end in probe[:16] and (b"WARC-Type" in probe or b"Content-Length" in probe)


def _next_record_start(stream, start: int, gz: bool, kind: str = "warc") -> int | None:
    """Offset of the next plausible record at or after ``start``: a gzip member that inflates to a
    record header (per-record gzip), or a header line of ``kind`` ("warc", "warc_lf", "arc")."""
    finder = _FIND_START["gz" if gz else kind]
    pos = start if gz else start - 1  # uncompressed starts are found by the newline before them
    step = 64 << 10  # the next record is usually near: grow the window only while none is found
    while True:
        stream.seek(pos)
        chunk = stream.read(step)
        m = finder.search(chunk)
        if m is None:
            if len(chunk) < step:
                return None
            pos += len(chunk) - 4096  # overlap: a header line may straddle the chunk edge
            step = min(step * 2, 1 << 20)
            continue
        cand = pos + m.start() + (0 if gz else 1)
        stream.seek(cand)
        probe = stream.read(8192)
        if gz:
            try:
                # a member may open with the CRLFs that close the record before it
                probe = zlib.decompressobj(31).decompress(probe, 512).lstrip(b"\r\n")
            except zlib.error:
                probe = b""
        if _looks_like_record(probe, kind):
            return cand
        pos = cand + 1


def _frame_damage(stream, raw: _Raw) -> tuple[str, int]:
    """Checks that the uncompressed record at ``raw.offset`` ends, by its Content-Length, where the
    next record starts (a WARC header line after the CRLFs that close a record) or at the end of
    the file. Returns ("", -1) when it does; ("", end) when the record is whole (its block is
    followed by the closing CRLFs) but no record starts at ``end``; else (reason, -1):
    ``bad_warc_header`` when the header block itself is odd (junk lines, a repeated WARC-Type or
    Content-Length), ``bad_content_length`` otherwise. Restores the stream position: the backend
    reading the file goes on undisturbed."""
    pos = stream.tell()
    try:
        stream.seek(raw.offset)
        head = stream.read(4096)  # WARC headers are a few hundred bytes
        if b"\n\n" not in head and b"\r\n\r\n" not in head:
            head += stream.read(_HEAD_BYTES - len(head))
        crlf, lf = head.find(b"\r\n\r\n"), head.find(b"\n\n")
        if crlf < 0 and lf < 0:
            return "", -1  # no header end in sight: the backend names the damage
        cut, sep = (crlf, 4) if lf < 0 or 0 <= crlf < lf else (lf, 2)
        end = raw.offset + cut + sep + raw.declared
        huge = end >= 1 << 62  # past any file (and past what seek takes)
        if not huge:
            stream.seek(end)
        tail = b"" if huge else stream.read(_BOUNDARY_PROBE)
        rest = tail.lstrip(b"\r\n")
        closed = len(tail) - len(rest)
        if closed <= 8:
            if rest.startswith(_WARC_START) and b"\n" in rest[:16]:
                return "", -1
            if not rest and tail:
                return "", -1  # only the closing CRLFs, then the end of the file
            if not tail and not huge:
                stream.seek(end - 1)
                if len(stream.read(1)) == 1:
                    return "", -1  # the record ends exactly at the end of the file
        if tail.startswith(b"\r\n\r\n" if sep == 4 else b"\n\n"):
            return "", end + (4 if sep == 4 else 2)
        lines = head[:cut].replace(b"\r\n", b"\n").split(b"\n")[1:]
        names = [line.split(b":", 1)[0].strip().lower() for line in lines]
        odd = not all(_WARC_FIELD.fullmatch(line.rstrip(b"\r")) for line in lines)
        if odd or names.count(b"content-length") != 1 or names.count(b"warc-type") != 1:
            return "bad_warc_header", -1
        return "bad_content_length", -1
    finally:
        stream.seek(pos)


_BOUNDARY_PROBE = 64
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r\n", re.I)
_WARC_FIELD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*")


def _whole_last_record(stream, offset: int) -> int | None:
    """Stored length of the record at ``offset`` when it is one whole WARC record (a whole gzip
    member for per-record gzip) that ends exactly at the end of the file; else None."""
    size = stream.seek(0, 2)
    if size is None or size <= offset:
        return None
    stream.seek(offset)
    stored = stream.read(min(size - offset, _WHOLE_READ_BYTES + 1))
    if len(stored) != size - offset:
        return None  # large last record: leave it to the careful path
    record = stored
    if stored[:2] == b"\x1f\x8b":
        d = zlib.decompressobj(31)
        try:
            record = d.decompress(stored, 64 << 20)
        except zlib.error:
            return None
        if not d.eof or d.unused_data or d.unconsumed_tail:
            return None
    end = record.find(b"\r\n\r\n", 0, 64 << 10)
    if end < 0 or not record.startswith(b"WARC/"):
        return None
    # Only a plain header block counts: anything odd (junk lines, a repeated WARC-Type or
    # Content-Length) goes to warcio, which names the damage.
    lines = record[:end].split(b"\r\n")[1:]
    if not all(_WARC_FIELD.fullmatch(line) for line in lines):
        return None
    names = [line.split(b":", 1)[0].lower() for line in lines]
    if names.count(b"content-length") != 1 or names.count(b"warc-type") != 1:
        return None
    m = _CONTENT_LENGTH.search(record, 0, end + 2)
    if m is None:
        return None
    if len(record) != end + 4 + int(m.group(1)) + 4 or not record.endswith(b"\r\n\r\n"):
        return None
    return len(stored)


def _seekable(stream) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _fastwarc_types() -> dict[int, str]:
    from fastwarc.warc import WarcRecordType as T

    names = ["warcinfo", "response", "resource", "request", "metadata", "revisit", "conversion", "continuation", "unknown"]
    return {int(getattr(T, n)): n for n in names}


_FASTWARC_TYPES = _fastwarc_types()


def iter_warc(
    path: str,
    limits: LimitsConfig = LimitsConfig(),
    *,
    fileobj=None,
    filename: str | None = None,
    stats: collections.Counter | None = None,
    start: int = 0,
    end: int | None = None,
) -> Iterator[Item]:
    """Stream one WARC/ARC file (local path or any Beam FileSystems URI) into Page, ImageRecord and Reject.

    ``fileobj`` reads from an open binary stream instead of opening ``path``; ``filename`` is the
    name recorded in provenance (default ``path``). ``stats`` (a Counter) receives ``records``,
    ``html_pages``, ``images`` and ``skipped_<type>`` counts for records that yield nothing.
    Never raises for bad input: damage becomes a Reject after every record read before it.

    ``start``/``end`` read one byte range of the file: the records (and damage) that start in
    [start, end), found from ``start`` as damage is resynchronised (``split_ranges`` makes them).
    The ranges of a file together give exactly what the whole read gives.
    """
    name = filename or path
    stats = stats if stats is not None else collections.Counter()
    reader = _FileReader(name, limits, stats, start, end)
    own = fileobj is None
    try:
        if own and "://" not in path:
            fileobj = open(path, "rb")  # a local file needs no Beam (`build-m3w extract` starts fast)
        elif own:
            from apache_beam.io.filesystem import CompressionTypes
            from apache_beam.io.filesystems import FileSystems

            fileobj = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except Exception as e:  # missing file, permission, unknown scheme: one reject for the file
        yield Reject.of(STAGE, "unreadable_file", Provenance(name, -1, -1, ""), detail=str(e).splitlines()[0][:200] if str(e) else repr(e))
        return
    try:
        yield from reader.read(fileobj)
    except _PANIC as e:  # last line of defence: a reader bug must not fail the job
        yield Reject.of(STAGE, "read_error", Provenance(name, -1, -1, ""), detail=f"{type(e).__name__}: {str(e)[:200]}")
    finally:
        if own:
            fileobj.close()


# ---------------------------------------------------------------------------------------------
# Byte ranges


SPLIT_BYTES = 64 << 20  # range size: a 1 GB WARC gives 16 ranges to spread over workers; few split points


def splittable_kind(gz: bool, arc: bool, whole_file_gzip: bool) -> bool:
    """Uncompressed and per-record gzip WARCs can be read from any record start; a whole-file gzip
    WARC (one deflate stream) cannot be entered in the middle, and ARC files are read whole."""
    return not arc and not whole_file_gzip


def split_ranges(path: str, range_bytes: int = SPLIT_BYTES) -> list[tuple[str, int, int | None]]:
    """(path, start, end) byte ranges of one file for ``iter_warc(path, start=, end=)``: each record
    is read by the range holding its first byte. A file that cannot be split, or is not larger
    than ``range_bytes``, is one range (path, 0, None). Never raises: a file that cannot be
    opened is one range, whose read reports it."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            size = f.seek(0, 2) if _seekable(f) else None
            if size is None or size <= range_bytes:
                return [(path, 0, None)]
            f.seek(0)
            prefix = f.read(4096)
            gz = prefix[:2] == b"\x1f\x8b"
            arc = prefix.lstrip()[:11] == b"filedesc://" or (gz and b"filedesc://" in _gunzip_head(prefix))
            if not splittable_kind(gz, arc, gz and _is_whole_file_gzip(f)):
                return [(path, 0, None)]
    except Exception:  # the read reports what is wrong with the file
        return [(path, 0, None)]
    cuts = list(range(0, size, range_bytes))
    return [(path, a, b if b < size else None) for a, b in zip(cuts, cuts[1:] + [size])]


def _gunzip_head(data: bytes) -> bytes:
    try:
        return zlib.decompressobj(31).decompress(data, 512)
    except zlib.error:
        return b""


def iter_range(rng: tuple[str, int, int | None], limits: LimitsConfig, stats: collections.Counter | None = None) -> Iterator[Item]:
    path, start, end = rng
    return iter_warc(path, limits, stats=stats, start=start, end=end)


# ---------------------------------------------------------------------------------------------
# What the Beam stages (pipeline.warc_stage) map over


def page_captures(rng: tuple[str, int, int | None], limits: LimitsConfig) -> Iterator[tuple[str, Provenance]]:
    """(URL, provenance) of every page ``iter_warc`` yields from one byte range of a file: what URL
    dedup needs, without the pages' bodies. Rejects and counters belong to the main read."""
    for item in iter_range(rng, limits):
        if isinstance(item, Page):
            yield item.url, item.provenance


_STAGES = ("SplitWarcFiles", "ListPageCaptures", "ReadReferencedImages", "ReadWarcFiles")


def __getattr__(name: str):
    # The Beam stages live in pipeline.warc_stage, loaded on first use: reading a file needs no Beam.
    if name in _STAGES:
        from pipeline import warc_stage

        return getattr(warc_stage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
