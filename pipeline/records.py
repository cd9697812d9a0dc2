"""Elements that flow between pipeline stages before they become documents."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from schemas.document import Provenance


class Page:
    """An HTML response record, body as text: ``Page(url, provenance, html, charset="")``.

    ``charset`` says where the encoding came from and which: "header:utf-8", "meta:cp1252",
    "detected:koi8-r". A reader builds pages with ``Page.from_body``: it keeps the raw body and
    the charset the HTTP header declared, and resolves and decodes them (``pipeline.warc.decode_html``)
    on first access of ``html`` or ``charset``; pages dropped before then are never decoded.
    Compares, prints and pickles like a dataclass of url, provenance, html, charset.
    """

    __slots__ = ("url", "provenance", "_html", "_charset", "_body", "_declared")

    def __init__(self, url: str, provenance: Provenance, html: str = "", charset: str = ""):
        self.url = url
        self.provenance = provenance
        self._html: str | None = html
        self._charset = charset
        self._body = None  # bytes or memoryview of the undecoded body
        self._declared = ""

    @classmethod
    def from_body(cls, url: str, provenance: Provenance, body, declared_charset: str = "") -> "Page":
        """A page whose ``body`` (bytes or memoryview) is decoded on first access."""
        page = cls(url, provenance)
        page._html = None
        page._body = body
        page._declared = declared_charset
        return page

    def _decode(self) -> None:
        from pipeline.warc import decode_html  # the reader owns charset resolution

        body = self._body
        if body is None:  # another thread decoded it meanwhile
            return
        self._html, self._charset = decode_html(bytes(body), self._declared)
        self._body = None

    @property
    def html(self) -> str:
        if self._html is None:
            self._decode()
        return self._html  # type: ignore[return-value]

    @html.setter
    def html(self, value: str) -> None:
        self._html, self._body = value, None

    @property
    def charset(self) -> str:
        if self._html is None:
            self._decode()
        return self._charset

    @charset.setter
    def charset(self, value: str) -> None:
        self._charset = value

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.url, self.provenance, self.html, self.charset) == (other.url, other.provenance, other.html, other.charset)  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return f"Page(url={self.url!r}, provenance={self.provenance!r}, html={self.html!r}, charset={self.charset!r})"

    def __reduce__(self):
        if self._html is None:  # still raw: ship the (usually smaller) bytes, decode where used
            return (_page_from_body, (self.url, self.provenance, bytes(self._body), self._declared))
        return (Page, (self.url, self.provenance, self._html, self._charset))


def _page_from_body(url: str, provenance: Provenance, body: bytes, declared_charset: str) -> Page:
    return Page.from_body(url, provenance, body, declared_charset)


@dataclass
class ImageRecord:
    """Bytes of an image found in the crawl (or fetched), keyed by its URL."""

    url: str
    provenance: Provenance
    data: bytes = field(repr=False)
    content_type: str = ""
    source: str = "warc"  # "warc" (in the input crawl) or "fetch" (fetched by --fetch-images)


@dataclass
class Reject:
    """Something the pipeline dropped, with why and where it came from. Written to ``rejects/``."""

    stage: str  # "read", "extract", "text_filter", "image", "dedup", "decontaminate", ...
    reason: str  # the counter name, e.g. "truncated_record", "language", "too_small"
    url: str = ""
    warc_filename: str = ""
    warc_record_offset: int = -1
    detail: str = ""  # measured value, exception text, the duplicate it lost to, ...

    def __reduce__(self) -> tuple:
        # Positional fields, not the default state dict: a third of the bytes and pickling time.
        return Reject, (self.stage, self.reason, self.url, self.warc_filename, self.warc_record_offset, self.detail)

    @classmethod
    def of(cls, stage: str, reason: str, prov: Provenance | None = None, url: str = "", detail: str = "") -> "Reject":
        if prov is None:
            return cls(stage, reason, url, "", -1, detail)
        return cls(stage, reason, url, prov.warc_filename, prov.warc_record_offset, detail)


class Rejects(list):
    """A batch of Reject as one element. Beam's default coder encodes a plain list item by item
    (one pickle call per reject); a list subclass is pickled in one call, 3-4x faster."""


def keep_sampled(key: str, rate: float) -> bool:
    """Deterministic sampling: the same key is always kept or always dropped at a given rate."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    h = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
    return h < rate * 2**64
