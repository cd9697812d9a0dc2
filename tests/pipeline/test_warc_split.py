"""Reading a WARC in byte ranges gives exactly the whole-file read: every record (and every damaged
stretch) is read by the one range that holds its first byte, on every real file, damaged ones included."""
from __future__ import annotations

import collections
import gzip

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.config import LimitsConfig
from pipeline.records import ImageRecord, Page, Reject
from pipeline.warc import WARC_SUFFIXES, ReadWarcFiles, iter_warc, split_ranges
from tests.conftest import shared_path
from tests.pipeline.test_warc_framing import record


def key(item):
    if isinstance(item, Reject):
        return ("reject", item.reason, item.url, item.warc_record_offset, item.detail)
    body = item.html if isinstance(item, Page) else item.data
    return (type(item).__name__, item.url, item.provenance, body)


def whole(path: str):
    stats: collections.Counter = collections.Counter()
    return [key(i) for i in iter_warc(path, LimitsConfig(), stats=stats)], stats


def in_ranges(path: str, range_bytes: int):
    stats: collections.Counter = collections.Counter()
    items = []
    for _, start, end in split_ranges(path, range_bytes):
        items += [key(i) for i in iter_warc(path, LimitsConfig(), stats=stats, start=start, end=end)]
    return items, stats


def real_files():
    root = shared_path("warc")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(WARC_SUFFIXES))


@pytest.mark.parametrize("range_bytes", [1000, 4096, 65536])
def test_every_real_file_read_in_ranges_gives_the_whole_read(range_bytes):
    files = real_files()
    assert len(files) > 60
    split = 0
    for path in files:
        expected, stats = whole(str(path))
        got, got_stats = in_ranges(str(path), range_bytes)
        assert got == expected, path
        assert got_stats == stats, path
        split += len(split_ranges(str(path), range_bytes)) > 1
    assert split >= {1000: 40, 4096: 30, 65536: 8}[range_bytes]  # the files were really cut


def test_ranges_cut_records_and_gzip_members_anywhere(tmp_path):
    """Generated files, cut every few hundred bytes: each record is read once, by the range that
    holds its first byte, in uncompressed and per-record gzip files; a whole-file gzip WARC is one range."""
    recs = [record(i, (i * 137) % 900) for i in range(60)]
    plain = tmp_path / "g.warc"
    plain.write_bytes(b"".join(recs))
    members = tmp_path / "g.warc.gz"
    members.write_bytes(b"".join(gzip.compress(r, mtime=0) for r in recs))
    one_stream = tmp_path / "one.warc.gz"
    one_stream.write_bytes(gzip.compress(b"".join(recs), mtime=0))
    for path in (plain, members):
        expected, _ = whole(str(path))
        assert len([k for k in expected if k[0] == "Page"]) == 60
        for step in (97, 500, 1333):
            assert len(split_ranges(str(path), step)) > 5
            assert in_ranges(str(path), step)[0] == expected, (path, step)
    assert split_ranges(str(one_stream), 100) == [(str(one_stream), 0, None)]


def test_a_revisit_in_a_later_range_is_resolved_against_the_earlier_ones():
    path = shared_path("warc", "ukwa_webarchive_discovery", "gov.uk-revisit-warcs")
    files = sorted(p for p in path.rglob("*.warc.gz"))
    for f in files:
        expected, stats = whole(str(f))
        got, got_stats = in_ranges(str(f), 2000)
        assert got == expected and got_stats == stats
        assert stats["records"] > 0


def test_read_warc_files_reads_one_file_in_many_ranges_as_a_whole():
    path = str(shared_path("warc", "aut_test_resources", "example.warc.gz"))
    expected, stats = whole(path)
    pages = sorted((k[1], k[2].warc_record_offset) for k in expected if k[0] == "Page")
    images = sorted((k[1], k[2].warc_record_offset) for k in expected if k[0] == "ImageRecord")
    with TestPipeline() as p:
        out = p | beam.Create([path]) | ReadWarcFiles(LimitsConfig(), range_bytes=50_000)
        assert_that(out.pages | "P" >> beam.Map(lambda x: (x.url, x.provenance.warc_record_offset)), equal_to(pages), label="Pages")
        assert_that(out.images | "I" >> beam.Map(lambda x: (x.url, x.provenance.warc_record_offset)), equal_to(images), label="Images")
    assert len(split_ranges(path, 50_000)) > 20
    assert all(isinstance(i, (Page, ImageRecord, Reject)) for i in iter_warc(path, LimitsConfig(), start=50_000, end=100_000))
