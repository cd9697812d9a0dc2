"""The WARC reader on real crawls from ../shared/data/warc: what comes out, and what is rejected why."""
from __future__ import annotations

import collections
import gzip
import io
import os
import pickle

import pytest

from pipeline.config import LimitsConfig
from pipeline.records import ImageRecord, Page, Reject
from pipeline.warc import (
    InputError,
    decode_chunked,
    EncodingError,
    decode_content,
    decode_html,
    iter_warc,
    match_inputs,
    parse_http_headers,
    sniff_image,
)
from tests.conftest import shared_path

WARC_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")


def read_all(path, limits=LimitsConfig(), **kw):
    stats = collections.Counter()
    items = list(iter_warc(str(path), limits, stats=stats, **kw))
    pages = [i for i in items if isinstance(i, Page)]
    images = [i for i in items if isinstance(i, ImageRecord)]
    rejects = [i for i in items if isinstance(i, Reject)]
    return pages, images, rejects, stats


def image_formats(images):
    return collections.Counter(i.content_type for i in images)


def reasons(rejects):
    return collections.Counter(r.reason for r in rejects)


# ---------------------------------------------------------------------------------------------
# Every real file


def test_a_wrong_content_length_is_counted_not_printed(capfd):
    """A record whose Content-Length misses the record boundary is one counted reject, the reader
    goes on at the next header line (no junk read as records), and warcio's multi-line warning is
    not printed, so a long run's output stays readable."""
    pages, _, rejects, stats = read_all(shared_path("warc", "ipwb_samples", "broken.warc"))
    assert [p.url for p in pages] == ["http://matkelly.com/frogsLeft"]
    assert [(r.reason, r.url) for r in rejects] == [("bad_content_length", "http://matkelly.com/froggies/frog.png")]
    assert "Remainder" not in capfd.readouterr().err
    # warcio's path (LF-only header lines) counts the same damage
    data = shared_path("warc", "ipwb_samples", "broken.warc").read_bytes().replace(b"\r\n", b"\n")
    _, _, lf_rejects, lf_stats = read_all("lf.warc", fileobj=io.BytesIO(data), filename="lf.warc")
    assert "bad_content_length" in reasons(lf_rejects)
    assert "Remainder" not in capfd.readouterr().err


def all_real_files():
    root = shared_path("warc")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(WARC_SUFFIXES))


def test_every_real_file_reads_without_raising():
    files = all_real_files()
    assert len(files) > 60
    for path in files:
        pages, images, rejects, stats = read_all(path)
        assert stats["records"] > 0 or rejects, path
        for r in rejects:
            assert r.stage == "read" and r.reason, (path, r)
            assert r.warc_filename == str(path)
        for item in pages + images:
            prov = item.provenance
            assert prov.warc_filename == str(path)
            assert prov.warc_record_offset >= 0 and prov.warc_record_length > 0, (path, item.url, prov)
            assert item.url


def test_offsets_are_unique_and_point_at_records():
    path = shared_path("warc", "aut_test_resources", "example.warc.gz")
    pages, images, _, _ = read_all(path)
    offsets = [i.provenance.warc_record_offset for i in pages + images]
    assert len(set(offsets)) == len(offsets)
    data = path.read_bytes()
    for item in pages[:5] + images[:5]:
        prov = item.provenance
        member = data[prov.warc_record_offset : prov.warc_record_offset + prov.warc_record_length]
        record = gzip.decompress(member)  # exactly one gzip member per record
        assert record.startswith(b"WARC/")
        assert item.url.encode() in record[:2000]


# ---------------------------------------------------------------------------------------------
# Known counts (WARC_STATS.txt)


def test_archive_org_crawl_pages_and_images():
    pages, images, rejects, stats = read_all(shared_path("warc", "aut_test_resources", "example.warc.gz"))
    # 140 text/html responses: 94 with status 200, 47 redirects or 404s (one of those is text/plain)
    status = [r for r in rejects if r.reason == "http_status"]
    html_status = [r for r in status if r.detail.endswith("text/html")]
    assert len(pages) + len(html_status) == 140
    assert image_formats(images) == {"image/jpeg": 18, "image/gif": 29, "image/png": 8}
    assert stats["records"] == 822
    assert stats["skipped_request"] == 261 and stats["skipped_metadata"] == 261
    assert pages[0].provenance.capture_date.startswith("2008-04-30T")
    assert all(p.provenance.warc_record_id.startswith("<urn:uuid:") for p in pages)


def test_arc_file_gives_the_same_content_as_its_warc():
    warc_pages, warc_images, _, _ = read_all(shared_path("warc", "aut_test_resources", "example.warc.gz"))
    arc_pages, arc_images, _, _ = read_all(shared_path("warc", "aut_test_resources", "example.arc.gz"))
    assert {p.url for p in arc_pages} == {p.url for p in warc_pages}
    assert image_formats(arc_images) == image_formats(warc_images)
    assert arc_pages[0].provenance.capture_date.startswith("2008-04-30T")


def test_books_toscrape_page_and_its_20_covers():
    pages, images, _, _ = read_all(shared_path("warc", "node_warc_tests", "books.toscrape.warc"))
    assert [p.url for p in pages] == ["http://books.toscrape.com/"]
    assert "All products" in pages[0].html
    assert image_formats(images) == {"image/jpeg": 20}
    assert all(i.data[:3] == b"\xff\xd8\xff" for i in images)


def test_mona_lisa_chunked_capture():
    pages, images, rejects, _ = read_all(
        shared_path("warc", "ukwa_webarchive_discovery", "wikipedia-mona-lisa", "flashfrozen-jwat-recompressed.warc.gz")
    )
    # wget fetched the article twice (http and https)
    assert [p.url.rsplit("/", 1)[-1] for p in pages] == ["Mona_Lisa", "Mona_Lisa"]
    assert all("Leonardo da Vinci" in p.html and p.html.rstrip().endswith("</html>") for p in pages)
    assert image_formats(images) == {"image/jpeg": 9, "image/png": 12}
    assert reasons(rejects)["empty_image"] == 1  # one PNG response with an empty body


@pytest.mark.parametrize("variant", ["none", "gzip", "brotli"])
def test_content_encodings_give_the_same_page(variant):
    root = shared_path("warc", "ukwa_webarchive_discovery", "compression")
    (page,), _, _, _ = read_all(root / f"transfer_compression_{variant}.warc.gz")
    (plain,), _, _, _ = read_all(root / "transfer_compression_none.warc.gz")
    assert page.html == plain.html
    assert "<html" in page.html.lower()


def test_warc_018_clueweb_quirks():
    pages, _, rejects, _ = read_all(shared_path("warc", "resiliparse_tests", "clueweb-quirk.warc.gz"))
    assert len(pages) == 29
    assert not rejects


def test_lf_only_warc_read_through_fallback():
    pages, _, _, _ = read_all(shared_path("warc", "ipwb_samples", "5mementos.warc"))
    assert len(pages) == 7


def test_resource_record_with_png_is_an_image():
    _, images, _, _ = read_all(shared_path("warc", "warcio_test_data", "example-space-in-target-uri.warc.gz"))
    assert [(i.url, i.content_type) for i in images] == [("file:///example%20with%20spaces.png", "image/png")]


def test_revisits_resolved_or_counted():
    _, _, rejects, _ = read_all(shared_path("warc", "pywb_sample_archive", "warcs", "iana.warc.gz"))
    assert reasons(rejects)["revisit_duplicate"] == 123
    _, _, rejects, _ = read_all(
        shared_path("warc", "ukwa_webarchive_discovery", "gov.uk-revisit-warcs", "BL-20140325122341434-00000-32090~opera~8443.warc.gz")
    )
    # the originals are in the other crawl file
    assert reasons(rejects)["revisit_unresolved"] == 55


# ---------------------------------------------------------------------------------------------
# Damaged files


def test_clipped_record_is_rejected_not_raised():
    pages, _, rejects, _ = read_all(shared_path("warc", "resiliparse_tests", "clipped.warc.gz"))
    assert not pages
    assert reasons(rejects) == {"truncated_record": 1}


def test_truncated_file_keeps_records_before_the_damage():
    pages, _, rejects, stats = read_all(shared_path("warc", "warcio_test_data", "example-trunc.warc"))
    assert stats["skipped_warcinfo"] == 2
    # the page's record is cut: its Content-Length runs into the next record, which is still read
    assert reasons(rejects) == {"bad_content_length": 1}
    assert stats["skipped_request"] == 1 and stats["resynced_after_damage"] == 1


def test_wrongly_chunked_gzip_members_still_give_the_page():
    # the response record spans two gzip members; the file is still readable
    pages, _, rejects, _ = read_all(shared_path("warc", "warcio_test_data", "example-wrong-chunks.warc.gz"))
    assert [p.url for p in pages] == ["http://example.com/"]
    assert "Example Domain" in pages[0].html
    assert not rejects


def test_bad_gzip_file_gives_its_pages():
    pages, _, _, _ = read_all(shared_path("warc", "warcio_test_data", "example-bad.warc.gz.bad"))
    assert len(pages) >= 1


def test_cut_file_gives_valid_records_then_a_reason(tmp_path):
    src = shared_path("warc", "aut_test_resources", "example.warc.gz").read_bytes()
    full_pages, full_images, _, _ = read_all(shared_path("warc", "aut_test_resources", "example.warc.gz"))
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(src[: len(src) // 2])
    pages, images, rejects, _ = read_all(cut)
    assert rejects and rejects[-1].reason in ("truncated_record", "bad_gzip")
    before = [p.url for p in full_pages if p.provenance.warc_record_offset < len(src) // 2 - 70_000]
    assert set(before) <= {p.url for p in pages}


def test_whole_file_gzip_is_read_with_uncompressed_offsets(tmp_path):
    src = shared_path("warc", "node_warc_tests", "books.toscrape.warc")
    whole = tmp_path / "books.warc.gz"
    whole.write_bytes(gzip.compress(src.read_bytes()))
    plain_pages, plain_images, _, _ = read_all(src)
    pages, images, rejects, _ = read_all(whole)
    assert [p.url for p in pages] == [p.url for p in plain_pages]
    assert [i.provenance.warc_record_offset for i in images] == [i.provenance.warc_record_offset for i in plain_images]
    assert not [r for r in rejects if r.reason not in ("not_html_or_image",)]


def test_unreadable_file_is_one_reject(tmp_path):
    _, _, rejects, _ = read_all(tmp_path / "missing.warc.gz")
    assert reasons(rejects) == {"unreadable_file": 1}


def test_fileobj_and_filename():
    path = shared_path("warc", "node_warc_tests", "books.toscrape.warc")
    stream = io.BytesIO(path.read_bytes())
    pages, images, _, _ = read_all("ignored", fileobj=stream, filename="gs://bucket/books.warc")
    assert len(pages) == 1 and len(images) == 20
    assert pages[0].provenance.warc_filename == "gs://bucket/books.warc"


# ---------------------------------------------------------------------------------------------
# Limits


def test_limits_are_counted():
    path = shared_path("warc", "node_warc_tests", "books.toscrape.warc")
    _, images, rejects, _ = read_all(path, LimitsConfig(max_image_bytes=5_000))
    assert reasons(rejects)["image_too_large"] == 20 - len(images) > 0
    pages, _, rejects, _ = read_all(path, LimitsConfig(max_html_bytes=1_000))
    assert not pages and reasons(rejects)["html_too_large"] == 1
    pages, images, rejects, _ = read_all(path, LimitsConfig(max_record_bytes=10_000))
    assert reasons(rejects)["record_too_large"] > 0


# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_charset_from_header_then_meta_then_detection():
    text = "Ça coûte 10 €"
    assert decode_html(text.encode("cp1252"), "windows-1252") == (text, "header:cp1252")
    latin = f'<html><head><meta charset="iso-8859-1"></head><body>{text[:8]}</body></html>'
    assert decode_html(latin.encode("latin-1"))[1] == "meta:cp1252"
    equiv = '<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS"><p>日本語のテキスト</p>'
    decoded, source = decode_html(equiv.encode("shift_jis"))
    assert source == "meta:shift_jis" and "日本語" in decoded
    # a wrong header label falls through to the page's own declaration
    decoded, source = decode_html(equiv.encode("shift_jis"), "utf-8")
    assert source == "meta:shift_jis"
    ru = ("<p>" + "Москва - столица России, крупнейший город страны. " * 20 + "</p>").encode("koi8-r")
    decoded, source = decode_html(ru)
    assert source.startswith("detected:") and "Москва" in decoded
    assert decode_html(b"\xef\xbb\xbf<p>hi</p>") == ("<p>hi</p>", "bom:utf-8")


def test_chunked_and_content_encoding():
    assert decode_chunked(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\nTrailer: v\r\n\r\n", None) == b"Wikipedia"
    with pytest.raises(OverflowError):
        decode_chunked(b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n", 6)
    bomb = gzip.compress(b"\0" * 50_000_000)
    with pytest.raises(OverflowError):
        decode_content(bomb, "gzip", 1_000_000)
    assert decode_content(gzip.compress(b"<p>x</p>"), "gzip", 100) == b"<p>x</p>"
    assert decode_content(b"<p>already decoded</p>", "gzip", 100) == b"<p>already decoded</p>"


def test_every_gzip_member_of_a_body_is_decoded_within_the_limit():
    members = [gzip.compress(f"<p>part {i}</p>".encode()) for i in range(3)]
    assert decode_content(b"".join(members), "gzip", 100) == b"<p>part 0</p><p>part 1</p><p>part 2</p>"
    assert decode_content(b"".join(members) + b"\0\0 trailing", "gzip", 100).endswith(b"<p>part 2</p>")
    # The limit holds over all members together, and a member cut short is an error, not a short page.
    many = gzip.compress(b"\0" * 600_000) * 2
    with pytest.raises(OverflowError):
        decode_content(many, "gzip", 1_000_000)
    with pytest.raises(EncodingError):
        decode_content(members[0] + members[1][:-6], "gzip", 100)
    with pytest.raises(EncodingError):
        decode_content(gzip.compress(b"") * 1001, "gzip", 100)


def test_http_headers_and_sniffing():
    status, headers, at = parse_http_headers(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nX: 1\r\nX: 2\r\n\r\nbody")
    assert (status, headers["content-type"], headers["x"], at) == (404, "text/html", "1, 2", 63)
    assert sniff_image(b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert sniff_image(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff_image(b"<html>") == ""


# ---------------------------------------------------------------------------------------------
# Input matching


def test_match_inputs_expands_dirs_globs_and_dedups():
    root = shared_path("warc", "aut_test_resources")
    by_dir = match_inputs([str(root)])
    assert str(root / "example.warc.gz") in by_dir and str(root / "example.arc.gz") in by_dir
    assert not [p for p in by_dir if p.endswith("WARC_STATS.txt")]
    by_glob = match_inputs([str(root / "*.warc.gz"), str(root / "example.warc.gz")])
    assert by_glob == sorted(set(by_glob)) and str(root / "example.warc.gz") in by_glob
    assert all(p.endswith(".warc.gz") for p in by_glob)


def test_match_inputs_errors_say_what_to_do(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        match_inputs([str(tmp_path / "nope.warc.gz")])
    with pytest.raises(InputError, match="matched no files"):
        match_inputs([str(tmp_path / "*.warc.gz")])
    with pytest.raises(InputError, match="holds no"):
        match_inputs([str(tmp_path)])


# ---------------------------------------------------------------------------------------------
# Beam


def test_read_warc_files_transform():
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.warc import ReadWarcFiles

    books = str(shared_path("warc", "node_warc_tests", "books.toscrape.warc"))
    trunc = str(shared_path("warc", "warcio_test_data", "example-trunc.warc"))
    with TestPipeline() as p:
        out = p | beam.Create([books, trunc]) | ReadWarcFiles(LimitsConfig())
        assert_that(out.pages | "PageUrl" >> beam.Map(lambda x: x.url), equal_to(["http://books.toscrape.com/"]), label="Pages")
        assert_that(
            out.images | "ImageCount" >> beam.combiners.Count.Globally(), equal_to([20]), label="Images"
        )
        assert_that(
            out.rejects | "Reason" >> beam.Map(lambda r: (os.path.basename(r.warc_filename), r.reason)) | beam.combiners.Count.PerElement(),
            equal_to([(("books.toscrape.warc", "not_html_or_image"), 9), (("example-trunc.warc", "bad_content_length"), 1)]),
            label="Rejects",
        )


class _Unseekable(io.RawIOBase):
    """A network-like stream: read only."""

    def __init__(self, data: bytes):
        self._inner = io.BytesIO(data)

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, b):
        return self._inner.readinto(b)


@pytest.mark.parametrize(
    "rel",
    ["aut_test_resources/example.warc.gz", "aut_test_resources/example.arc.gz", "node_warc_tests/books.toscrape.warc"],
)
def test_unseekable_stream_gives_the_same_items(rel):
    path = shared_path("warc", *rel.split("/"))
    pages, images, rejects, _ = read_all(path)
    s_pages, s_images, s_rejects, _ = read_all("x", fileobj=_Unseekable(path.read_bytes()), filename=str(path))
    assert [(p.url, p.provenance) for p in s_pages] == [(p.url, p.provenance) for p in pages]
    assert [(i.url, i.provenance) for i in s_images] == [(i.url, i.provenance) for i in images]
    assert reasons(s_rejects) == reasons(rejects)


@pytest.mark.parametrize("name", ["example.warc.gz", "example.arc.gz"])
def test_records_after_a_corrupt_gzip_member_are_recovered(tmp_path, name):
    path = shared_path("warc", "aut_test_resources", name)
    pages, images, _, _ = read_all(path)
    victim = pages[len(pages) // 2].provenance
    data = bytearray(path.read_bytes())
    middle = victim.warc_record_offset + victim.warc_record_length // 2
    data[middle : middle + 64] = b"\0" * 64  # wreck the deflate stream of one member
    bad = tmp_path / name
    bad.write_bytes(bytes(data))
    b_pages, b_images, b_rejects, stats = read_all(bad)
    assert {p.url for p in b_pages} == {p.url for p in pages} - {pages[len(pages) // 2].url}
    assert len(b_images) == len(images)
    assert stats["resynced_after_damage"] >= 1
    damage = [r for r in b_rejects if r.reason not in ("not_html_or_image", "http_status")]
    assert [(r.reason, r.warc_record_offset) for r in damage] == [("bad_gzip", victim.warc_record_offset)]


def test_records_after_header_garbage_are_recovered(tmp_path):
    path = shared_path("warc", "node_warc_tests", "books.toscrape.warc")
    pages, images, _, _ = read_all(path)
    victim = images[5].provenance
    data = path.read_bytes()
    at = victim.warc_record_offset + 20  # inside the WARC header block
    bad = tmp_path / "bad.warc"
    bad.write_bytes(data[:at] + b"\x00garbage\x07\r\n\r\n" + data[at:])
    b_pages, b_images, b_rejects, _ = read_all(bad)
    assert [p.url for p in b_pages] == [p.url for p in pages]
    assert {i.url for i in b_images} == {i.url for i in images} - {images[5].url}
    assert {r.reason for r in b_rejects} & {"bad_warc_header", "read_error", "truncated_record"}


def test_pages_decode_on_first_access_and_pickle_as_the_same_page():
    path = shared_path("warc", "ipwb_samples", "sample-1.warc.gz")
    pages, _, _, _ = read_all(path)
    assert pages
    for page in pages:
        shipped = pickle.loads(pickle.dumps(page))  # as Beam ships it between workers, still undecoded
        assert shipped.charset and page.charset == shipped.charset
        assert page.html == shipped.html and page == shipped
        assert pickle.loads(pickle.dumps(page)) == page  # decoded pages pickle as text
    # the text and charset are those decode_html gives for the record's body
    raw = Page.from_body("http://x.example/", pages[0].provenance, b"<meta charset='koi8-r'><p>\xf0\xd2\xc9\xd7\xc5\xd4</p>")
    assert (raw.html, raw.charset) == ("<meta charset='koi8-r'><p>Привет</p>", "meta:koi8-r")
    assert Page("http://x.example/", pages[0].provenance, "<p>text</p>").html == "<p>text</p>"


def test_damage_in_the_last_record_header_is_still_named():
    # A clean last record is measured from its own header; an odd one is re-read so the damage
    # gets a reason, as it would anywhere else in the file.
    data = shared_path("warc", "warcio_test_data", "example.warc").read_bytes()
    at = data.index(b"\r\n", data.rfind(b"WARC/1.0\r\n")) + 2
    damaged = data[:at] + b"WARC-Type: \x07junk\r\nContent-Length: -5\r\n" + data[at:]
    pages, _, rejects, _ = read_all("x.warc", fileobj=io.BytesIO(damaged), filename="x.warc")
    clean_pages, _, clean_rejects, _ = read_all("x.warc", fileobj=io.BytesIO(data), filename="x.warc")
    assert [p.url for p in pages] == [p.url for p in clean_pages] == ["http://example.com/"]
    assert "bad_warc_header" in reasons(rejects) and "bad_warc_header" not in reasons(clean_rejects)
    # the last record of a clean uncompressed file runs to the end of the file, CRLFCRLF included
    frogs = shared_path("warc", "ipwb_samples", "frogTest.warc")
    _, (frog,), _, _ = read_all(frogs)
    assert frog.provenance.warc_record_offset + frog.provenance.warc_record_length == frogs.stat().st_size
