"""URL dedup on the gov.uk crawl pair (two Heritrix crawls of the same site, 11 minutes apart)."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from dedup.urls import DeduplicateUrls, capture_rank, capture_time
from pipeline.config import DedupConfig
from pipeline.records import Page, Reject
from pipeline.urls import normalize_url
from pipeline.warc import iter_warc
from schemas.document import Provenance
from tests.conftest import shared_path

FIRST = "BL-20140325121225068-00000-32090~opera~8443.warc.gz"
SECOND = "BL-20140325122341434-00000-32090~opera~8443.warc.gz"


def _read(name: str) -> tuple[list[Page], list[Reject]]:
    path = shared_path("warc", "ukwa_webarchive_discovery", "gov.uk-revisit-warcs", name)
    pages, rejects = [], []
    for item in iter_warc(str(path), filename=name):
        if isinstance(item, Page):
            pages.append(item)
        elif isinstance(item, Reject):
            rejects.append(item)
    return pages, rejects


def _dedup(p, pages: list[Page]):
    """DeduplicateUrls on ``pages``, with their captures as ListPageCaptures lists them."""
    captures = p | "Captures" >> beam.Create([(pg.url, pg.provenance) for pg in pages])
    return (captures, p | "Pages" >> beam.Create(pages)) | DeduplicateUrls(DedupConfig())


def test_gov_uk_crawl_pair_keeps_the_newest_capture_of_each_url():
    first, _ = _read(FIRST)
    second, second_rejects = _read(SECOND)
    urls_first = {normalize_url(p.url) for p in first}
    urls_second = {normalize_url(p.url) for p in second}
    both = urls_first & urls_second
    assert len(both) == 6  # the pages the second crawl fetched again in full
    # Revisit records of the second crawl carry no page: their URLs keep the first crawl's capture.
    revisited = {normalize_url(r.url) for r in second_rejects if r.reason.startswith("revisit")} & urls_first
    assert revisited - urls_second

    expected_kept = {u: SECOND if u in urls_second else FIRST for u in urls_first | urls_second}
    with TestPipeline() as p:
        # The newer crawl first: the outcome must not depend on input order.
        out = _dedup(p, second + first)
        assert_that(
            out.pages | "Kept" >> beam.Map(lambda pg: (normalize_url(pg.url), pg.provenance.warc_filename)),
            equal_to(sorted(expected_kept.items())),
            label="NewestKept",
        )
        assert_that(
            out.rejects | "Dropped" >> beam.Map(lambda r: (r.stage, r.reason, normalize_url(r.url), r.warc_filename)),
            equal_to([("dedup", "duplicate_url", u, FIRST) for u in sorted(both)]),
            label="OlderRejected",
        )


def _page(url: str, date: str, warc: str, offset: int) -> Page:
    return Page(url, Provenance(warc, offset, 100, date), html=f"{warc}@{offset}")


def test_same_url_variants_collapse_and_ties_break_deterministically():
    pages = [
        _page("http://Example.com:80/a?b=2&a=1#top", "2020-05-01T10:00:00Z", "x.warc.gz", 10),
        _page("http://example.com/a?a=1&b=2", "2020-05-01T10:00:00Z", "y.warc.gz", 5),  # same time: y > x
        _page("http://example.com/a?a=1&b=2", "2019-01-01T00:00:00Z", "z.warc.gz", 0),
        _page("https://example.com/a?a=1&b=2", "2018-01-01T00:00:00Z", "z.warc.gz", 99),  # https: another URL
    ]
    with TestPipeline() as p:
        out = _dedup(p, pages)
        assert_that(out.pages | "Html" >> beam.Map(lambda pg: pg.html), equal_to(["y.warc.gz@5", "z.warc.gz@99"]), label="Kept")
        assert_that(
            out.rejects | "Detail" >> beam.Map(lambda r: (r.warc_filename, r.detail)),
            equal_to(
                [
                    ("x.warc.gz", "kept 2020-05-01T10:00:00Z y.warc.gz@5"),
                    ("z.warc.gz", "kept 2020-05-01T10:00:00Z y.warc.gz@5"),
                ]
            ),
            label="Rejects",
        )


def test_capture_dates_compare_as_times_not_strings():
    assert capture_time("2014-03-25T12:17:11Z") < capture_time("2014-03-25T13:17:11+00:00")
    assert capture_time("2014-03-25T12:17:11+02:00") < capture_time("2014-03-25T11:17:11Z")
    assert capture_time("garbage") == float("-inf")
    a = Provenance("a.warc.gz", 1, 1, "2014-03-25T12:17:11.5Z")
    b = Provenance("b.warc.gz", 1, 1, "2014-03-25T12:17:11Z")
    assert capture_rank(a) > capture_rank(b)
