"""Elements that flow between pipeline stages before they become documents."""
from __future__ import annotations

from dataclasses import dataclass, field

from schemas.document import Provenance


@dataclass
class Page:
    """An HTML response record, body decoded to text."""

    url: str
    provenance: Provenance
    html: str
    charset: str = ""  # where the charset came from and which: "header:utf-8", "meta:latin-1", "detected:cp1252"


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

    @classmethod
    def of(cls, stage: str, reason: str, prov: Provenance | None = None, url: str = "", detail: str = "") -> "Reject":
        if prov is None:
            return cls(stage, reason, url, "", -1, detail)
        return cls(stage, reason, url, prov.warc_filename, prov.warc_record_offset, detail)
