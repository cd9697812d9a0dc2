"""build-m3w end to end on real crawls: one run over every WARC in ../shared/data/warc.

The run uses tests/data/spine.yaml (filters and dedup off, images stored as crawled) so the
assertions are about extraction order, the image join across records, and the shard format.
"""
from __future__ import annotations

import hashlib
import io
import json
import os

import msgpack
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from warcio.archiveiterator import ArchiveIterator

from pipeline.build import rejects_to_lines
from pipeline.cli import main as build_m3w
from pipeline.records import Reject
from pipeline.verify import verify
from schemas.arrow import from_row, merged_positions
from schemas.document import ImageNode, TextNode, from_json, validate
from tests.conftest import REPO, shared_path

SPINE_CONFIG = str(REPO / "tests" / "data" / "spine.yaml")
LOCAL = ["--direct_running_mode=in_memory"]  # the local engine in-process: the multi-process default is exercised by the demo


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    warcs = shared_path("warc")
    out = str(tmp_path_factory.mktemp("corpus"))
    rc = build_m3w(["build", "--input", str(warcs), "--output", out, "--config", SPINE_CONFIG, "--shard-size", "50", *LOCAL])
    assert rc == 0
    return out


def read_wds(out: str) -> dict[str, dict]:
    """doc_id -> the document's JSON, plus ``_images``: its stored bytes aligned with ``nodes``."""
    tars = sorted(os.path.join(out, "wds", f) for f in os.listdir(os.path.join(out, "wds")))
    docs = {}
    for sample in wds.WebDataset(tars, shardshuffle=False):
        obj = json.loads(sample["json"])
        obj["_images"] = msgpack.unpackb(sample["images.mp"])
        docs[obj["doc_id"]] = obj
    return docs


def read_parquet(out: str) -> dict[str, object]:
    folder = os.path.join(out, "parquet")
    docs = {}
    for name in sorted(os.listdir(folder)):
        for row in pq.read_table(os.path.join(folder, name)).to_pylist():
            docs[row["doc_id"]] = from_row(row)
    return docs


def by_url(docs: dict[str, dict], url: str) -> dict:
    found = [d for d in docs.values() if d["url"] == url]
    assert found, f"{url} not in the corpus"
    return found[0]


def index_of(texts: list, needle: str) -> int:
    for i, t in enumerate(texts):
        if t is not None and needle in t:
            return i
    raise AssertionError(f"{needle!r} not found")


def test_every_document_reads_back_and_validates(corpus):
    wds_docs, pq_docs = read_wds(corpus), read_parquet(corpus)
    assert wds_docs and set(wds_docs) == set(pq_docs)
    for doc_id, obj in wds_docs.items():
        stored = obj.pop("_images")
        assert validate(obj) == [], doc_id
        doc = from_json(obj)
        pq_doc = pq_docs[doc_id]
        # Parquet holds OBELICS's positions: the paragraphs between two images merged into one text.
        assert [type(n) for n in merged_positions(doc.nodes)] == [type(n) for n in pq_doc.nodes]
        assert [n.text for n in merged_positions(doc.nodes) if isinstance(n, TextNode)] == \
            [n.text for n in pq_doc.nodes if isinstance(n, TextNode)]
        wds_images = [b for n, b in zip(doc.nodes, stored) if isinstance(n, ImageNode)]
        pq_images = [n for n in pq_doc.nodes if isinstance(n, ImageNode)]
        assert wds_images == [n.data for n in pq_images], f"{doc_id}: tar and Parquet image bytes differ"
        for node in pq_images:
            assert hashlib.sha256(node.data).hexdigest() == node.sha256
    assert verify(corpus) == []


def test_mona_lisa_text_in_reading_order_with_images_in_place(corpus):
    shared_path("warc", "ukwa_webarchive_discovery", "wikipedia-mona-lisa")
    doc = by_url(read_wds(corpus), "http://en.wikipedia.org/wiki/Mona_Lisa")
    texts, images = doc["texts"], doc["images"]
    # Sections come in the page's order.
    order = [index_of(texts, s) for s in ("Subject and title", "Theft and vandalism", "Aesthetics", "Conservation")]
    assert order == sorted(order)
    # The painting comes first, before the lead paragraph; the 1911 photo sits in its section.
    first_image = next(i for i, u in enumerate(images) if u)
    assert "Mona_Lisa" in images[first_image] and "C2RMF" in images[first_image]
    assert first_image < index_of(texts, "The Mona Lisa (La Gioconda")
    stolen = next(i for i, u in enumerate(images) if u and "Mona_Lisa_stolen-1911" in u)
    assert index_of(texts, "Theft and vandalism") < stolen < index_of(texts, "fame was emphasized when it was stolen")
    # Every attached image carries real, decodable bytes at its node position.
    attached = [(i, n) for i, n in enumerate(doc["nodes"]) if n["type"] == "image"]
    assert len(attached) >= 5
    for i, node in attached:
        data = doc["_images"][i]
        assert Image.open(io.BytesIO(data)).size == (node["width"], node["height"])


def test_books_toscrape_page_has_its_20_covers(corpus):
    shared_path("warc", "node_warc_tests", "books.toscrape.warc")
    docs = [d for d in read_wds(corpus).values() if d["url"].startswith("http://books.toscrape.com/")]
    assert docs
    covers = [n for n in docs[0]["nodes"] if n["type"] == "image"]
    assert len(covers) == 20
    assert all(n["format"] == "jpeg" and n["url"].startswith("http://books.toscrape.com/media/cache/") for n in covers)


def test_archive_org_crawl_pages_have_jpeg_gif_and_png_images(corpus):
    shared_path("warc", "aut_test_resources", "example.warc.gz")
    docs = [d for d in read_wds(corpus).values() if d["provenance"]["warc_filename"].endswith("aut_test_resources/example.warc.gz")]
    # GIFs are stored as PNG (RGB, first frame); the crawled format shows in the URL.
    crawled = {n["url"].rsplit(".", 1)[-1].lower() for d in docs for n in d["nodes"] if n["type"] == "image"}
    assert {"jpg", "gif", "png"} <= crawled
    assert sum(1 for d in docs if any(n["type"] == "image" for n in d["nodes"])) >= 5


def test_hostile_files_do_not_fail_the_job_and_every_reject_has_reason_and_provenance(corpus):
    rejects = []
    folder = os.path.join(corpus, "rejects")
    for name in sorted(os.listdir(folder)):
        rejects += [json.loads(line) for line in open(os.path.join(folder, name), encoding="utf-8")]
    read = [r for r in rejects if r["stage"] == "read"]
    reasons = {r["reason"] for r in read}
    assert {"truncated_record", "revisit_duplicate"} <= reasons
    assert all(r["warc_filename"] and r["warc_record_offset"] >= 0 for r in read)
    # Every reject of every stage names where it came from (a missing image: the page citing it).
    assert all(r["warc_filename"] and r["reason"] for r in rejects)
    report = json.load(open(os.path.join(corpus, "report.json")))
    # Counters count every drop; the rejects output holds one record per counted read drop.
    counted = sum(v for k, v in report["counters"].items() if k.startswith("read.dropped_"))
    assert counted == len(read)
    # Nothing valid in a damaged file is lost: each page warcio reads whole from a file with a
    # damaged record is a document or a counted reject of a later stage (e.g. a duplicate URL).
    damaged = {r["warc_filename"] for r in read if r["reason"].startswith(("truncated", "bad_"))}
    docs = {(d["provenance"]["warc_filename"], d["url"]) for d in read_wds(corpus).values()}
    later = {(r["warc_filename"], r["url"]) for r in rejects if r["stage"] != "read"}
    whole = {(path, url) for path in damaged for url in html_pages_warcio_reads_whole(path)}
    broken = {(r["warc_filename"], r["url"]) for r in read}
    assert whole - broken, "no whole page found in the damaged files"
    assert whole - broken <= docs | later


def html_pages_warcio_reads_whole(path: str) -> set[str]:
    urls = set()
    with open(path, "rb") as f:
        try:
            for rec in ArchiveIterator(f, arc2warc=True):
                ctype = rec.http_headers.get_header("Content-Type", "") if rec.http_headers else ""
                if rec.rec_type == "response" and "html" in ctype and rec.http_headers.get_statuscode() == "200":
                    rec.content_stream().read()
                    urls.add(rec.rec_headers.get_header("WARC-Target-URI"))
        except Exception:  # noqa: BLE001 - the damage: stop where warcio stops
            pass
    return urls


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    assert build_m3w(["build", "--input", str(tmp_path / "nothing-*.warc.gz"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("build-m3w: error:") and "\n" not in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    sample = str(REPO / "samples" / "demo.warc.gz")
    assert build_m3w(["build", "--input", sample, "--output", str(blocker / "out")]) == 2
    assert "writable --output" in capsys.readouterr().err
    assert build_m3w(["build", "--input", sample, "--output", str(tmp_path / "o"), "--config", str(tmp_path / "no.yaml")]) == 2
    assert "--config" in capsys.readouterr().err


def test_rejects_are_sampled_by_content_deterministically():
    rejects = [Reject("text_filter", "node_min_words", f"https://e.org/{i}", "a.warc.gz", i, "words=1") for i in range(2000)]
    assert next(rejects_to_lines(1.0)(rejects)) == [json.dumps(vars(r), sort_keys=True) for r in rejects]
    assert list(rejects_to_lines(0.0)(rejects)) == []
    tenth = next(rejects_to_lines(0.1)(rejects))
    assert 100 < len(tenth) < 300
    # The same reject is kept whether it arrives alone or in a batch.
    assert tenth == [line for r in rejects for line in sum(rejects_to_lines(0.1)(r), [])]


def test_keep_originals_writes_the_crawled_bytes_beside_the_stored_image(tmp_path):
    """``images.keep_originals``: every image's crawled bytes land in the tar and the Parquet
    row, match ``original_sha256``, and never replace the stored image the trainer reads."""
    from model.data import read_wds_documents

    config = tmp_path / "originals.yaml"
    config.write_text("version: 1\nimages:\n  keep_originals: true\n  resize_longest_side: 64\n")
    out = str(tmp_path / "out")
    sample = str(REPO / "samples" / "demo.warc.gz")
    assert build_m3w(["build", "--input", sample, "--output", out, "--config", str(config), *LOCAL]) == 0
    assert verify(out) == []
    tars = sorted(os.path.join(out, "wds", f) for f in os.listdir(os.path.join(out, "wds")))
    checked = 0
    stored = {}
    for s in wds.WebDataset(tars, shardshuffle=False):
        doc = from_json(json.loads(s["json"]))
        for pos, node in enumerate(doc.nodes):
            if isinstance(node, ImageNode):
                original = msgpack.unpackb(s["originals.mp"])[pos]
                assert hashlib.sha256(original).hexdigest() == node.original_sha256
                assert Image.open(io.BytesIO(original)).format.lower() == node.original_format
                stored[(doc.doc_id, pos)] = hashlib.sha256(msgpack.unpackb(s["images.mp"])[pos]).hexdigest()
                assert stored[(doc.doc_id, pos)] == node.sha256 != node.original_sha256  # resized to 64 px
                checked += 1
    assert checked >= 3
    for path in tars:  # the trainer's loader takes the stored images, in order
        for d in read_wds_documents(path):
            got = [hashlib.sha256(img).hexdigest() for img in d["images"] if img is not None]
            assert got == [h for (doc_id, _), h in sorted(stored.items()) if doc_id == d["key"]]
    rows = [r for f in sorted(os.listdir(os.path.join(out, "parquet"))) for r in pq.read_table(os.path.join(out, "parquet", f)).to_pylist()]
    for r in rows:
        for node in from_row(r).nodes:
            if isinstance(node, ImageNode):
                assert hashlib.sha256(node.original_data).hexdigest() == node.original_sha256
