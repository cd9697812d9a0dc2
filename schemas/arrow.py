"""Arrow schema of the Parquet shards: OBELICS's four columns, to the letter, and m3w's beside them.

OBELICS (HuggingFaceM4/OBELICS dataset card) has ``images`` (list of URL strings), ``texts`` (list of
strings), ``metadata`` (one JSON string per document) and ``general_metadata`` (one JSON string):

* ``texts`` and ``images`` are aligned lists with exactly one non-null per position; consecutive
  paragraphs between two images are one text, joined by a blank line (``TEXT_JOINER``), as in
  OBELICS, so no two texts are neighbours;
* ``metadata`` is ``json.dumps`` of a list aligned with them: a dict per image (``IMAGE_META``
  names the keys: OBELICS's ``document_url``, ``src``, ``alt_text``, ``rendered_width``,
  ``rendered_height``, ``format`` and m3w's resolved fields), ``null`` per text;
* ``general_metadata`` is ``json.dumps`` of ``{url, warc_filename, warc_record_offset,
  warc_record_length}``.

m3w's columns: ``doc_id``, ``url``, ``title``, ``language``, ``language_score``, ``capture_date``,
``warc_record_id``, ``image_bytes`` (the stored bytes, aligned with ``images``, null at texts) and
``original_image_bytes`` (the crawled bytes where ``images.keep_originals`` kept them, else null).

Schema 1.0/1.1 rows (``metadata`` a list of JSON strings, one text per paragraph, everything in
``general_metadata``) are still read by ``from_row``.
"""
from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from schemas.document import SCHEMA_VERSION, Document, ImageNode, Node, Provenance, TextNode

# OBELICS joins the paragraphs of one text position with a blank line.
TEXT_JOINER = "\n\n"

OBELICS_COLUMNS = ("images", "metadata", "general_metadata", "texts")

ARROW_SCHEMA = pa.schema(
    [
        # OBELICS's columns, with its types.
        pa.field("images", pa.list_(pa.string())),
        pa.field("metadata", pa.string()),
        pa.field("general_metadata", pa.string()),
        pa.field("texts", pa.list_(pa.string())),
        # m3w's.
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("language", pa.string()),
        pa.field("language_score", pa.float64()),
        pa.field("capture_date", pa.string()),
        pa.field("warc_record_id", pa.string()),
        pa.field("image_bytes", pa.list_(pa.binary())),
        pa.field("original_image_bytes", pa.list_(pa.binary())),
    ],
    metadata={"m3w_schema_version": SCHEMA_VERSION},
)

# metadata dict key -> ImageNode field. The first six are OBELICS's names (``rendered_*`` is the
# size the HTML declares); the rest are m3w's, resolved from the bytes.
IMAGE_META = {
    "src": "url",
    "alt_text": "alt",
    "rendered_width": "declared_width",
    "rendered_height": "declared_height",
    "format": "format",
    "width": "width",
    "height": "height",
    "sha256": "sha256",
    "phash": "phash",
    "source": "source",
    "original_sha256": "original_sha256",
    "original_format": "original_format",
}


def _compact(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def merged_positions(nodes: list[Node]) -> list[Node]:
    """Nodes with each run of consecutive texts merged into one ``TextNode`` (OBELICS's positions)."""
    out: list[Node] = []
    run: list[str] = []
    for n in nodes:
        if isinstance(n, TextNode):
            run.append(n.text)
            continue
        if run:
            out.append(TextNode(TEXT_JOINER.join(run)))
            run = []
        out.append(n)
    if run:
        out.append(TextNode(TEXT_JOINER.join(run)))
    return out


def image_metadata(doc_url: str, node: ImageNode) -> dict[str, Any]:
    meta = {"document_url": doc_url}
    meta.update({key: getattr(node, field) for key, field in IMAGE_META.items()})
    return meta


def to_row(doc: Document) -> dict[str, Any]:
    nodes = merged_positions(doc.nodes)
    images = [n if isinstance(n, ImageNode) else None for n in nodes]
    originals = [im.original_data if im else None for im in images]
    general = {
        "url": doc.url,
        "warc_filename": doc.provenance.warc_filename,
        "warc_record_offset": doc.provenance.warc_record_offset,
        "warc_record_length": doc.provenance.warc_record_length,
    }
    return {
        "images": [im.url if im else None for im in images],
        "metadata": _compact([image_metadata(doc.url, im) if im else None for im in images]),
        "general_metadata": _compact(general),
        "texts": [n.text if isinstance(n, TextNode) else None for n in nodes],
        "doc_id": doc.doc_id,
        "url": doc.url,
        "title": doc.title,
        "language": doc.language,
        "language_score": doc.language_score,
        "capture_date": doc.provenance.capture_date,
        "warc_record_id": doc.provenance.warc_record_id,
        "image_bytes": [im.data if im else None for im in images],
        # One null list instead of a list of nulls when nothing was kept: smaller shards.
        "original_image_bytes": originals if any(o is not None for o in originals) else None,
    }


def from_row(row: dict[str, Any]) -> Document:
    """Inverse of ``to_row``: a Parquet row back to a Document (with image bytes).

    Texts come back merged between images (one ``TextNode`` per position). Rows of schema 1.0/1.1
    (``metadata`` a list) are read too.
    """
    if isinstance(row["metadata"], list):
        return _from_row_v11(row)
    metas = json.loads(row["metadata"])
    n = len(row["texts"])
    originals = row.get("original_image_bytes") or [None] * n
    nodes: list[Node] = []
    for text, url, meta, data, original in zip(row["texts"], row["images"], metas, row["image_bytes"], originals):
        if text is not None:
            nodes.append(TextNode(text))
            continue
        fields = {field: meta.get(key) for key, field in IMAGE_META.items()}
        fields["alt"] = fields["alt"] or ""
        nodes.append(ImageNode(**fields, data=data, original_data=original))
        assert nodes[-1].url == url, "images[] and metadata[] disagree"
    general = json.loads(row["general_metadata"])
    prov = Provenance(
        warc_filename=general["warc_filename"],
        warc_record_offset=general["warc_record_offset"],
        warc_record_length=general["warc_record_length"],
        capture_date=row["capture_date"],
        warc_record_id=row.get("warc_record_id") or "",
    )
    return Document(url=row["url"], provenance=prov, nodes=nodes, language=row.get("language"),
                    language_score=row.get("language_score"), title=row.get("title"), doc_id=row["doc_id"])


def _from_row_v11(row: dict[str, Any]) -> Document:
    """Schema 1.0/1.1 rows: ``metadata`` a list of JSON strings, provenance in ``general_metadata``."""
    general = json.loads(row["general_metadata"])
    prov_fields = ("warc_filename", "warc_record_offset", "warc_record_length", "capture_date", "warc_record_id")
    nodes: list[Node] = []
    originals = row.get("original_image_bytes") or [None] * len(row["texts"])
    for text, url, meta, data, original in zip(row["texts"], row["images"], row["metadata"], row["image_bytes"], originals):
        if text is not None:
            nodes.append(TextNode(text))
        else:
            nodes.append(ImageNode(**json.loads(meta), data=data, original_data=original))
            assert nodes[-1].url == url, "images[] and metadata[] disagree"
    return Document(
        url=row["url"],
        provenance=Provenance(**{k: general[k] for k in prov_fields if k in general}),
        nodes=nodes,
        language=general.get("language"),
        language_score=general.get("language_score"),
        title=general.get("title"),
        doc_id=row["doc_id"],
    )

