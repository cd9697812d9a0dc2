"""Arrow schema of the Parquet shards: OBELICS-compatible columns derived from the document model.

``texts`` and ``images`` are aligned lists with exactly one non-null per position (``images``
holds absolute image URLs, as in OBELICS); ``metadata`` is a JSON string per position (the image
node's fields, null for text); ``general_metadata`` is a JSON string with url and WARC provenance;
``image_bytes`` holds the stored bytes aligned with ``images``; ``original_image_bytes`` the bytes as
crawled where ``images.keep_originals`` kept them (null elsewhere).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import pyarrow as pa

from schemas.document import SCHEMA_VERSION, Document, ImageNode, Provenance, TextNode, node_to_json

ARROW_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("texts", pa.list_(pa.string())),
        pa.field("images", pa.list_(pa.string())),
        pa.field("metadata", pa.list_(pa.string())),
        pa.field("general_metadata", pa.string()),
        pa.field("image_bytes", pa.list_(pa.binary())),
        pa.field("original_image_bytes", pa.list_(pa.binary())),
    ],
    metadata={"m3w_schema_version": SCHEMA_VERSION},
)


def to_row(doc: Document) -> dict[str, Any]:
    metadata = []
    image_bytes = []
    originals = []
    for n in doc.nodes:
        if isinstance(n, ImageNode):
            meta = node_to_json(n)
            meta.pop("type")
            metadata.append(json.dumps(meta, sort_keys=True, separators=(",", ":")))
            image_bytes.append(n.data)
            originals.append(n.original_data)
        else:
            metadata.append(None)
            image_bytes.append(None)
            originals.append(None)
    general = {
        "url": doc.url,
        "title": doc.title,
        "language": doc.language,
        "language_score": doc.language_score,
        "schema_version": SCHEMA_VERSION,
        **dataclasses.asdict(doc.provenance),
    }
    return {
        "doc_id": doc.doc_id,
        "url": doc.url,
        "texts": doc.texts,
        "images": [n.url if isinstance(n, ImageNode) else None for n in doc.nodes],
        "metadata": metadata,
        "general_metadata": json.dumps(general, sort_keys=True, ensure_ascii=False, separators=(",", ":")),
        "image_bytes": image_bytes,
        # One null list instead of a list of nulls when nothing was kept: smaller shards.
        "original_image_bytes": originals if any(o is not None for o in originals) else None,
    }


def from_row(row: dict[str, Any]) -> Document:
    """Inverse of ``to_row``: a Parquet row back to a Document (with image bytes)."""
    general = json.loads(row["general_metadata"])
    prov_fields = {f.name for f in dataclasses.fields(Provenance)}
    nodes = []
    originals = row.get("original_image_bytes") or [None] * len(row["texts"])
    columns = (row["texts"], row["images"], row["metadata"], row["image_bytes"], originals)
    for text, url, meta, data, original in zip(*columns):
        if text is not None:
            nodes.append(TextNode(text))
        else:
            fields = json.loads(meta)
            nodes.append(ImageNode(**fields, data=data, original_data=original))
            assert nodes[-1].url == url, "images[] and metadata[] disagree"
    return Document(
        url=row["url"],
        provenance=Provenance(**{k: general[k] for k in prov_fields}),
        nodes=nodes,
        language=general.get("language"),
        language_score=general.get("language_score"),
        title=general.get("title"),
        doc_id=row["doc_id"],
    )
