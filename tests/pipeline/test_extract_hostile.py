"""Markup that would stall the HTML parser costs a worker at most ``parse_timeout_s`` (+ 1 s).

Known classes are refused before parsing by a linear screen (``hostile_markup``), in
milliseconds; anything else is abandoned by the watchdog (``GuardedExtractor``: the parse runs in
a child process that is killed at the limit). Either way the page is a counted reject. Every
hostile input is generated here.
"""
from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import ExtractConfig, LimitsConfig
from pipeline.extract import DROP_REASONS, ExtractionError, extract_document, extract_nodes, hostile_markup
from pipeline.extract_guard import GuardedExtractor
from pipeline.extract_stage import ExtractDocuments
from pipeline.records import Page
from schemas.document import Document, Provenance
from tests.conftest import REPO, shared_path

TIMEOUT_S = 1.0
LIMITS = LimitsConfig(parse_timeout_s=TIMEOUT_S)
# The acceptance bound with the default config (parse_timeout_s + 1 s), for work that runs in
# milliseconds but must never again take the minutes it took: a safety limit on a loaded machine.
BOUND_S = LimitsConfig().parse_timeout_s + 1.0
PARA = "A paragraph of article text, long enough to count as prose, with commas, clauses and words."
NORMAL = f"<html><head><title>Fine</title></head><body><article><p>{PARA}</p><img src='/a.jpg'></article></body></html>"
PROV = Provenance("crawl.warc.gz", 0, 100, "2024-01-01T00:00:00Z")


def stalling_page() -> str:
    """Markup the screen lets through that lexbor parses for seconds: 300 tags of 2,000 attributes
    each (every tag too small to refuse alone; lexbor checks each attribute against the previous)."""
    tag = "<p " + " ".join(f"a{i}=1" for i in range(2000)) + ">x</p>"
    return "<html><body>" + tag * 300 + "</body></html>"


# -- the screen: each reproduction, refused in milliseconds ------------------------------------


@pytest.mark.parametrize(
    "html",
    [
        "<html><body><p " + " ".join(f'a{i}="x"' for i in range(50_000)) + ">hello</p></body></html>",
        "<div>" * 60_000 + "x" + "</div>" * 60_000,
        "<span><b>" * 30_000 + "x",
        "<a " * 90_000,  # ran 244 s in the old screen's regex
        "<a " * 21_000 + "x" * 256_000,
        "<div></i>" * 200_000,  # end tags that match nothing: 105 s in lexbor
        "<p " + " ".join(f"a{i}" for i in range(200_000)) + ">x",  # attributes without '='
        "<div/>" * 30_000,  # "/>" does not close a <div>
        '<p a=">" ' + " ".join(f"b{i}" for i in range(100_000)) + ">x",  # '>' inside a quoted value
    ],
    ids=[
        "50k-attributes", "60k-nested-divs", "unclosed-inline-nesting", "90k-unclosed-a", "21k-unclosed-a-256k-text",
        "200k-unmatched-end-tags", "200k-attributes-without-equals", "self-closing-divs", "quoted-gt-then-attributes",
    ],
)
def test_parser_stalling_markup_is_a_counted_drop_not_a_stall(html):
    start = time.monotonic()
    with pytest.raises(ExtractionError) as e:
        extract_nodes(html, "http://example.org/")
    assert e.value.reason == "hostile_markup"
    assert time.monotonic() - start < BOUND_S  # milliseconds; lexbor or the old screen took 25-244 s


def test_long_pages_with_implied_end_tags_are_still_extracted():
    items = "".join(f"<li>Item number {i} of a very long list of things" for i in range(25_000))
    html = f"<html><body><h1>A long list</h1><ul>{items}</ul><p>The end of the list.</body></html>"
    nodes, _ = extract_nodes(html, "http://example.org/")
    text = " ".join(getattr(n, "text", "") for n in nodes)
    assert "Item number 24999" in text


@pytest.mark.parametrize(
    "html",
    [
        "<p>" + "<a href='/x'>link</a> text " * 30_000 + "</p>",  # many tags, shallow
        "<p>" + "<a href='/x'>unclosed link " * 10_000 + "</p>",  # <a> closes the open <a>
        "<svg>" + "<path d='M0 0L1 1'/>" * 30_000 + "</svg><p>after the figure</p>",  # "/>" closes in SVG
        "<script>" + "if (a<b) { x = '<div>'; }\n" * 20_000 + "</script><p>after the script</p>",
        "<p><img src='data:image/png;base64," + "A" * 400_000 + "'>An inline image</p>" + "<b>x</b>" * 20_000,
        "<div data-json='" + '{"k": "v", "list": [1, 2, 3]} ' * 4_000 + "'>props</div>" + "<i>x</i>" * 20_000,
    ],
    ids=["30k-links", "10k-unclosed-links", "30k-svg-paths", "script-with-markup", "400k-data-uri", "long-quoted-value"],
)
def test_large_ordinary_markup_passes_the_screen(html):
    assert hostile_markup("<html><body>" + html + "</body></html>") is None


def test_no_real_page_is_refused_by_the_screen():
    root = shared_path("extraction")
    pages = [gzip.open(p).read() for p in sorted((root / "article_benchmark" / "html").glob("*.html.gz"))]
    pages += [p.read_bytes() for p in sorted((root / "trafilatura" / "cache").iterdir()) if p.is_file()]
    assert len(pages) > 200
    refused = [(i, r) for i, p in enumerate(pages) if (r := hostile_markup(p.decode("utf-8", "replace")))]
    assert refused == []


# -- the watchdog: whatever the parser does, the page ends at the limit --------------------------


def test_watchdog_abandons_a_stalling_page_and_the_next_page_extracts():
    html = stalling_page()
    assert hostile_markup(html) is None  # the screen does not know this one
    with GuardedExtractor(ExtractConfig(), LIMITS) as ex:
        assert ex.extract(Page("http://a.example/warm", PROV, NORMAL)).texts  # child started
        start = time.monotonic()
        with pytest.raises(ExtractionError) as e:
            ex.extract(Page("http://a.example/slow", PROV, html))
        took = time.monotonic() - start
        assert e.value.reason == "parse_timeout"
        assert took <= TIMEOUT_S + 1.0  # the acceptance bound; lexbor alone needs several seconds
        after = ex.extract(Page("http://a.example/after", PROV, NORMAL))
        assert after == extract_document(Page("http://a.example/after", PROV, NORMAL))
        assert ex.restarts == 1


def test_a_crashed_extraction_process_is_a_parse_error_and_is_replaced():
    with GuardedExtractor(ExtractConfig(), LimitsConfig(parse_timeout_s=30.0)) as ex:
        ex.extract(Page("http://a.example/warm", PROV, NORMAL))
        pid = ex.pid
        threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()  # dies mid-page, as on a segfault
        with pytest.raises(ExtractionError) as e:
            ex.extract(Page("http://a.example/slow", PROV, stalling_page()))
        assert e.value.reason == "parse_error" and "signal 9" in e.value.detail
        assert ex.extract(Page("http://a.example/after", PROV, NORMAL)).texts
        assert ex.pid != pid


def test_guarded_extraction_equals_in_process_extraction_on_real_pages():
    root = shared_path("extraction", "readability")
    cases = sorted(c for c in root.iterdir() if (c / "source.html").exists())
    with GuardedExtractor(ExtractConfig(), LimitsConfig()) as ex:
        for case in cases:
            page = Page("http://fakehost/test/page.html", PROV, (case / "source.html").read_bytes().decode("utf-8", "replace"))
            try:
                want = extract_document(page)
            except ExtractionError as e:
                with pytest.raises(ExtractionError) as got:
                    ex.extract(page)
                assert got.value.reason == e.reason, case.name
                continue
            assert ex.extract(page) == want, case.name
        assert ex.restarts == 0


def _page_of(seed: tuple[str, int, str]) -> Page:
    url, offset, title = seed
    html = stalling_page() if title == "slow" else NORMAL.replace("Fine", title)
    return Page(url, Provenance("crawl.warc.gz", offset, 100, "2024-01-01T00:00:00Z"), html)


def test_beam_stage_rejects_the_stalling_page_with_provenance_and_a_counter():
    # Pages are made inside the pipeline: Beam copies a Create's payload many times over.
    seeds = [("http://a.example/1", 0, "Fine"), ("http://a.example/slow", 4242, "slow"), ("http://a.example/2", 900, "Also")]
    with TestPipeline() as p:
        pages = p | beam.Create(seeds) | "MakePages" >> beam.Map(_page_of)
        out = pages | ExtractDocuments(ExtractConfig(), LIMITS)
        docs = out.documents | "Titles" >> beam.Map(lambda d: (d.url, d.title))
        assert_that(docs, equal_to([("http://a.example/1", "Fine"), ("http://a.example/2", "Also")]), label="CheckDocs")
        rejects = out.rejects | "Keys" >> beam.Map(lambda r: (r.stage, r.reason, r.url, r.warc_filename, r.warc_record_offset))
        assert_that(
            rejects, equal_to([("extract", "parse_timeout", "http://a.example/slow", "crawl.warc.gz", 4242)]), label="CheckRejects"
        )
    counters = {
        r.key.metric.name: r.committed
        for r in p.result.metrics().query(beam.metrics.MetricsFilter().with_namespace("m3w"))["counters"]
    }
    assert counters["extract.dropped_parse_timeout"] == 1
    assert counters["extract.documents"] == 2


def test_build_m3w_extract_skips_the_stalling_page_at_the_limit(tmp_path):
    (tmp_path / "slow.html").write_text(stalling_page())
    (tmp_path / "fine.html").write_text(NORMAL)
    (tmp_path / "m3w.yaml").write_text(f"limits:\n  parse_timeout_s: {TIMEOUT_S}\n")
    start = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "extract", "--config", str(tmp_path / "m3w.yaml"),
         str(tmp_path / "slow.html"), str(tmp_path / "fine.html")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "slow.html: parse_timeout" in res.stderr
    assert res.stdout.count("\n") == 1 and PARA in res.stdout
    assert time.monotonic() - start < 60  # start-up included; without the watchdog lexbor alone needs longer


def test_build_m3w_explain_gives_up_on_the_stalling_page_at_the_limit(tmp_path):
    (tmp_path / "slow.html").write_text(stalling_page())
    (tmp_path / "m3w.yaml").write_text(f"limits:\n  parse_timeout_s: {TIMEOUT_S}\n")
    start = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "explain", "--config", str(tmp_path / "m3w.yaml"),
         "--input", str(tmp_path / "slow.html"), "--url", "file://" + str(tmp_path / "slow.html")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert res.returncode == 2 and "parse_timeout" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 60  # start-up included; without the watchdog lexbor alone needs longer


# -- the markup class, generated: the page ends within the limit as a document or a counted reject ---

FRAGMENTS = [
    "<div>", "</div>", "</i>", "<b>", "</b>", "<p>", "<a href=x>", "</a>", "<li>", "<table>", "<td>", "<tr>",
    "<span ", "a ", "b=1 ", 'c="x" ', "d='y' ", "\" ", "' ", "=", ">", "<", "</", "<!--", "-->", "<!x>", "<?x>",
    "<svg>", "<path/>", "</svg>", "<script>", "</script>", "<select>", "<option>", "<frameset>", "<template>",
    "<math>", "<mi>", "<form>", "<button>", "<h1>", "<font>", "<nobr>", "<marquee>", "<ruby><rt>", "<col>",
    "text ", "&amp;", "&#x", "\x00", "\u00e9 ", "<div/>", "<img src=a.jpg ", "<br/>",
]


@st.composite
def hostile_pages(draw) -> str:
    unit = "".join(draw(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=6)))
    size = draw(st.sampled_from([20_000, 300_000, 1_500_000]))  # characters
    reps = max(1, size // len(unit))
    tail = "".join(draw(st.lists(st.sampled_from(FRAGMENTS), max_size=4)))
    return unit * reps + tail


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(html=hostile_pages())
def test_generated_markup_ends_within_the_limit_as_a_document_or_a_counted_reject(guard, html):
    start = time.monotonic()
    hostile_markup(html)
    assert time.monotonic() - start < BOUND_S  # linear: milliseconds per MB (the old regex took minutes on some)
    guard.extract(Page("http://fuzz.example/warm", PROV, NORMAL))  # a child replaced after a timeout is up again
    start = time.monotonic()
    try:
        doc = guard.extract(Page("http://fuzz.example/", PROV, html))
        assert isinstance(doc, Document)
    except ExtractionError as e:
        assert e.reason in DROP_REASONS
    assert time.monotonic() - start <= TIMEOUT_S + 1.0


@pytest.fixture(scope="module")
def guard():
    with GuardedExtractor(ExtractConfig(), LIMITS) as ex:
        yield ex
