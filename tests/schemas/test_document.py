"""The document schema: JSON and Arrow forms round-trip, and the validator names the field at fault."""
from __future__ import annotations

import json

import pyarrow as pa

from schemas.arrow import ARROW_SCHEMA, from_row, to_row
from schemas.document import Document, ImageNode, Provenance, TextNode, dumps, from_json, to_json, validate


def sample_doc() -> Document:
    prov = Provenance("crawl/a.warc.gz", 1234, 567, "2024-05-01T10:00:00Z", "<urn:uuid:1>")
    return Document(
        url="http://example.org/page.html",
        provenance=prov,
        nodes=[
            TextNode("A first paragraph."),
            ImageNode("http://example.org/a.jpg", alt="a cat", declared_width=320, declared_height=200,
                      sha256="ab" * 32, width=320, height=200, format="jpeg", phash="0f" * 8, source="warc",
                      data=b"\xff\xd8jpeg"),
            TextNode("A second paragraph."),
        ],
        language="en",
        language_score=0.99,
        title="Page",
    )


def test_doc_id_is_stable_and_depends_on_capture():
    a, b = sample_doc(), sample_doc()
    assert a.doc_id == b.doc_id and len(a.doc_id) == 24
    b.provenance.warc_record_offset += 1
    assert Document(b.url, b.provenance).doc_id != a.doc_id


def test_json_round_trip_has_aligned_obelics_lists():
    doc = sample_doc()
    obj = json.loads(dumps(doc))
    assert validate(obj) == []
    assert obj["texts"] == ["A first paragraph.", None, "A second paragraph."]
    assert obj["images"] == [None, "http://example.org/a.jpg", None]
    back = from_json(obj)
    assert back.nodes[1].url == doc.nodes[1].url and back.nodes[1].data is None  # bytes live outside JSON
    assert dumps(back) == dumps(doc)


def test_arrow_round_trip_keeps_image_bytes():
    doc = sample_doc()
    table = pa.Table.from_pylist([to_row(doc)], schema=ARROW_SCHEMA)
    row = table.to_pylist()[0]
    assert row["images"][1] == "http://example.org/a.jpg" and row["texts"][1] is None
    assert json.loads(row["general_metadata"])["warc_record_offset"] == 1234
    back = from_row(row)
    assert back.nodes[1].data == b"\xff\xd8jpeg"
    assert to_json(back) == to_json(doc)


def test_validator_names_the_field_at_fault():
    obj = to_json(sample_doc())
    obj["provenance"]["warc_record_offset"] = "12"
    obj["nodes"][1]["width"] = "wide"
    obj["images"][1] = "http://elsewhere/"
    errors = validate(obj)
    assert any(e.startswith("provenance.warc_record_offset") for e in errors)
    assert any(e.startswith("nodes[1].width") for e in errors)
    assert any(e.startswith("texts[1]/images[1]") for e in errors)
    assert validate({"schema_version": "0.1"})[0].startswith("schema_version")
