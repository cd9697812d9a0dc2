"""The m3w document: one web page as an ordered list of text and image nodes.

This module is the only contract between the corpus builder and the trainer. The JSON layout
(webdataset ``.json`` member, ``build-m3w extract`` lines, rejects) and the Arrow schema (Parquet
shards, OBELICS-compatible columns) both derive from the dataclasses below, and ``validate`` names
the field at fault.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Union

SCHEMA_VERSION = "1.2"
# Versions ``validate`` accepts: 1.1 added ``original_format`` (absent from 1.0 documents); 1.2
# changed the shards around the same JSON: OBELICS's Parquet columns to the letter
# (``schemas/arrow.py``) and one images member per webdataset sample (``pipeline/shards.py``).
READABLE_VERSIONS = ("1.0", "1.1", "1.2")


@dataclass
class Provenance:
    """Where a page came from in the crawl."""

    warc_filename: str  # path or URI of the WARC/ARC file as given to the pipeline
    warc_record_offset: int  # byte offset of the record (of its gzip member when compressed)
    warc_record_length: int  # bytes of the record as stored (compressed length when gzipped)
    capture_date: str  # ISO 8601, from WARC-Date (or the ARC header)
    warc_record_id: str = ""  # WARC-Record-ID; empty for ARC


@dataclass
class TextNode:
    text: str


@dataclass
class ImageNode:
    """An image in reading order. Declared fields come from the HTML; resolved ones from the bytes."""

    url: str  # absolute URL
    alt: str = ""  # alt text, or the <figcaption> of the enclosing <figure>
    declared_width: int | None = None  # width attribute, in CSS pixels
    declared_height: int | None = None
    # Resolved once the bytes are known (None until then):
    sha256: str | None = None  # of the stored bytes (after any re-encoding)
    width: int | None = None  # pixels of the stored image
    height: int | None = None
    format: str | None = None  # "jpeg", "png", "webp", "gif", ...
    phash: str | None = None  # 64-bit perceptual hash, hex
    source: str | None = None  # "warc" | "fetch"
    original_sha256: str | None = None  # of the bytes as crawled, before resizing
    original_format: str | None = None  # of the bytes as crawled, sniffed from them
    data: bytes | None = field(default=None, repr=False, compare=False)  # stored bytes; not in JSON
    # The bytes as crawled, only with ``images.keep_originals``; not in JSON.
    original_data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def resolved(self) -> bool:
        return self.sha256 is not None


Node = Union[TextNode, ImageNode]


@dataclass
class Document:
    url: str
    provenance: Provenance
    nodes: list[Node] = field(default_factory=list)
    language: str | None = None
    language_score: float | None = None
    title: str | None = None
    doc_id: str = ""

    def __post_init__(self) -> None:
        if not self.doc_id:
            self.doc_id = make_doc_id(self.url, self.provenance)

    @property
    def texts(self) -> list[str | None]:
        return [n.text if isinstance(n, TextNode) else None for n in self.nodes]

    @property
    def images(self) -> list[ImageNode]:
        return [n for n in self.nodes if isinstance(n, ImageNode)]

    @property
    def text(self) -> str:
        return "\n\n".join(n.text for n in self.nodes if isinstance(n, TextNode))


def make_doc_id(url: str, prov: Provenance) -> str:
    """Stable id of one capture: the same inputs always give the same id (shard assignment uses it).

    Keyed on the input path as the run names it, so captures of two files that share a base name
    (``a/crawl.warc.gz``, ``b/crawl.warc.gz``) never share an id."""
    key = f"{url}\0{prov.warc_filename}\0{prov.warc_record_offset}"
    return hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# JSON layout (webdataset member, extract output)

_IMAGE_JSON_FIELDS = [f.name for f in dataclasses.fields(ImageNode) if f.name not in ("data", "original_data")]


def node_to_json(node: Node) -> dict[str, Any]:
    if isinstance(node, TextNode):
        return {"type": "text", "text": node.text}
    out = {"type": "image"}
    out.update({k: getattr(node, k) for k in _IMAGE_JSON_FIELDS})
    return out


def to_json(doc: Document) -> dict[str, Any]:
    """The document as JSON: ``nodes`` in reading order plus OBELICS-style aligned ``texts``/``images``."""
    return {
        "schema_version": SCHEMA_VERSION,
        "doc_id": doc.doc_id,
        "url": doc.url,
        "title": doc.title,
        "language": doc.language,
        "language_score": doc.language_score,
        "provenance": dataclasses.asdict(doc.provenance),
        "nodes": [node_to_json(n) for n in doc.nodes],
        "texts": doc.texts,
        "images": [n.url if isinstance(n, ImageNode) else None for n in doc.nodes],
    }


def from_json(obj: dict[str, Any]) -> Document:
    """Inverse of ``to_json`` (image bytes are not part of the JSON)."""
    errors = validate(obj)
    if errors:
        raise ValueError(f"invalid document: {errors[0]}")
    nodes: list[Node] = []
    for n in obj["nodes"]:
        if n["type"] == "text":
            nodes.append(TextNode(n["text"]))
        else:
            nodes.append(ImageNode(**{k: n.get(k) for k in _IMAGE_JSON_FIELDS if k in n}))
    return Document(
        url=obj["url"],
        provenance=Provenance(**obj["provenance"]),
        nodes=nodes,
        language=obj.get("language"),
        language_score=obj.get("language_score"),
        title=obj.get("title"),
        doc_id=obj["doc_id"],
    )


def dumps(doc: Document) -> bytes:
    """Canonical JSON bytes (sorted keys, no whitespace): identical documents give identical bytes."""
    return json.dumps(to_json(doc), sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "surrogatepass"
    )


# ---------------------------------------------------------------------------------------------
# Validation: every error names the field at fault.

_TYPES = {
    "doc_id": str,
    "url": str,
    "provenance": dict,
    "nodes": list,
    "texts": list,
    "images": list,
}
_PROV_TYPES = {
    "warc_filename": str,
    "warc_record_offset": int,
    "warc_record_length": int,
    "capture_date": str,
    "warc_record_id": str,
}
_IMAGE_TYPES = {
    "url": str,
    "alt": str,
    "declared_width": (int, type(None)),
    "declared_height": (int, type(None)),
    "sha256": (str, type(None)),
    "width": (int, type(None)),
    "height": (int, type(None)),
    "format": (str, type(None)),
    "phash": (str, type(None)),
    "source": (str, type(None)),
    "original_sha256": (str, type(None)),
    "original_format": (str, type(None)),
}


def validate(obj: dict[str, Any]) -> list[str]:
    """Check a document's JSON form; returns error messages, each naming a field (empty = valid)."""
    if not isinstance(obj, dict):
        return ["document: not a JSON object"]
    errs: list[str] = []
    if obj.get("schema_version") not in READABLE_VERSIONS:
        errs.append(f"schema_version: expected one of {READABLE_VERSIONS}, got {obj.get('schema_version')!r}")
    for key, typ in _TYPES.items():
        if not isinstance(obj.get(key), typ):
            errs.append(f"{key}: expected {typ.__name__}, got {type(obj.get(key)).__name__}")
    if errs:
        return errs
    for key, typ in _PROV_TYPES.items():
        v = obj["provenance"].get(key)
        if not isinstance(v, typ) or isinstance(v, bool):
            errs.append(f"provenance.{key}: expected {typ.__name__}, got {type(v).__name__}")
    nodes, texts, images = obj["nodes"], obj["texts"], obj["images"]
    if not (len(nodes) == len(texts) == len(images)):
        errs.append(f"texts/images: lengths {len(texts)}/{len(images)} differ from nodes ({len(nodes)})")
        return errs
    for i, n in enumerate(nodes):
        where = f"nodes[{i}]"
        if not isinstance(n, dict) or n.get("type") not in ("text", "image"):
            errs.append(f"{where}.type: expected 'text' or 'image'")
            continue
        if n["type"] == "text":
            if not isinstance(n.get("text"), str):
                errs.append(f"{where}.text: expected str")
            elif texts[i] != n["text"] or images[i] is not None:
                errs.append(f"texts[{i}]/images[{i}]: must hold the text and null")
        else:
            for key, typ in _IMAGE_TYPES.items():
                if key in n and not isinstance(n[key], typ):
                    errs.append(f"{where}.{key}: wrong type {type(n[key]).__name__}")
            if not isinstance(n.get("url"), str) or not n.get("url"):
                errs.append(f"{where}.url: expected a non-empty absolute URL")
            elif images[i] != n["url"] or texts[i] is not None:
                errs.append(f"texts[{i}]/images[{i}]: must hold null and the image URL")
    return errs
