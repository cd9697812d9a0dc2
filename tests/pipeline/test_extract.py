"""The DOM walker on hand-written HTML: one rule per test, plus the ExtractDocuments stage."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.config import ExtractConfig, LimitsConfig
from pipeline.extract import (
    ExtractDocuments,
    ExtractionError,
    best_srcset_candidate,
    extract_document,
    extract_nodes,
    parse_srcset,
)
from pipeline.records import Page, Reject
from schemas.document import Document, ImageNode, Provenance, TextNode, to_json, validate

BASE = "http://example.com/blog/post.html"
PARA = "A paragraph of article text, long enough to count as prose, with commas, clauses and words."


def page(body: str, head: str = "") -> str:
    return f"<html><head><title>T</title>{head}</head><body>{body}</body></html>"


def nodes_of(body: str, head: str = "", **cfg) -> list:
    nodes, _ = extract_nodes(page(body, head), BASE, ExtractConfig(**cfg))
    return nodes


def texts(nodes) -> list[str]:
    return [n.text for n in nodes if isinstance(n, TextNode)]


def images(nodes) -> list[ImageNode]:
    return [n for n in nodes if isinstance(n, ImageNode)]


def kinds(nodes) -> str:
    return "".join("T" if isinstance(n, TextNode) else "I" for n in nodes)


# ---------------------------------------------------------------------------------------------
# Image URLs


def test_srcset_parsing_keeps_commas_inside_urls():
    cands = parse_srcset("https://cdn/x/c_fit,w_320/a.jpg 320w, https://cdn/x/c_fit,w_800/a.jpg 800w")
    assert cands == [("https://cdn/x/c_fit,w_320/a.jpg", 320.0, "w"), ("https://cdn/x/c_fit,w_800/a.jpg", 800.0, "w")]


def test_best_srcset_candidate_is_the_largest():
    assert best_srcset_candidate("a.jpg 1x, b.jpg 2x, c.jpg 1.5x") == "b.jpg"
    assert best_srcset_candidate("small.jpg 300w, big.jpg 1200w, mid.jpg 600w") == "big.jpg"
    assert best_srcset_candidate("only.jpg") == "only.jpg"


def test_srcset_used_when_src_is_missing():
    imgs = images(nodes_of('<p>x</p><img srcset="s.jpg 300w, l.jpg 900w" width="300">'))
    assert [i.url for i in imgs] == ["http://example.com/blog/l.jpg"]


def test_src_wins_over_srcset_when_both_are_real():
    # src is what non-browser crawlers fetch, so it is the URL most likely in the crawl.
    imgs = images(nodes_of('<img src="a.jpg" srcset="a-2x.jpg 2x">'))
    assert [i.url for i in imgs] == ["http://example.com/blog/a.jpg"]


@pytest.mark.parametrize("attr", ["data-src", "data-original", "data-lazy-src", "data-lazy", "data-img-src", "src2"])
def test_lazy_attribute_replaces_a_placeholder_src(attr):
    body = f'<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" {attr}="/img/real.jpg">'
    assert [i.url for i in images(nodes_of(body))] == ["http://example.com/img/real.jpg"]


def test_lazy_attribute_replaces_a_placeholder_file():
    body = '<img src="/static/blank.gif" data-src="//cdn.example.com/photo.jpg">'
    assert [i.url for i in images(nodes_of(body))] == ["http://cdn.example.com/photo.jpg"]


def test_lazy_srcset_without_src():
    body = '<img data-srcset="a.jpg 400w, b.jpg 800w">'
    assert [i.url for i in images(nodes_of(body))] == ["http://example.com/blog/b.jpg"]


def test_picture_source_used_when_img_has_no_url():
    body = '<picture><source srcset="p.webp 1x, p2.webp 2x" type="image/webp"><img alt="Cat"></picture>'
    imgs = images(nodes_of(body))
    assert [(i.url, i.alt) for i in imgs] == [("http://example.com/blog/p2.webp", "Cat")]


def test_picture_img_src_kept_when_present():
    body = '<picture><source srcset="p.webp"><img src="p.jpg"></picture>'
    assert [i.url for i in images(nodes_of(body))] == ["http://example.com/blog/p.jpg"]


def test_base_href_resolves_relative_urls():
    nodes = nodes_of('<img src="pics/a.jpg"><img src="/b.jpg">', head='<base href="http://static.example.org/v2/">')
    assert [i.url for i in images(nodes)] == ["http://static.example.org/v2/pics/a.jpg", "http://static.example.org/b.jpg"]


def test_relative_base_href_is_resolved_against_the_page():
    nodes = nodes_of('<img src="a.jpg">', head='<base href="/assets/">')
    assert [i.url for i in images(nodes)] == ["http://example.com/assets/a.jpg"]


def test_noscript_image_used_only_when_the_lazy_img_had_no_url():
    body = '<img class="lazy" src="data:image/gif;base64,xx"><noscript><img src="real.jpg"></noscript>'
    assert [i.url for i in images(nodes_of(body))] == ["http://example.com/blog/real.jpg"]
    body = '<img data-src="real.jpg"><noscript><img src="real.jpg"></noscript>'
    assert [i.url for i in images(nodes_of(body))] == ["http://example.com/blog/real.jpg"]


def test_data_uris_pixels_and_icons_dropped():
    body = (
        '<img src="data:image/png;base64,iVBORw0KGgo=">'
        '<img src="/t.gif" width="1" height="1">'
        '<img src="/sp.gif" width="0" height="0">'
        '<img src="/img/site-logo.png" width="200">'
        '<img src="/img/share-button.png">'
        '<img src="/photo.jpg" width="640" height="0">'
    )
    assert [i.url for i in images(nodes_of(body))] == ["http://example.com/photo.jpg"]


def test_url_word_checks_ignore_case_also_in_non_ascii_urls():
    body = (
        '<img src="/img/Site-LOGO.PNG" width="200">'
        '<img src="/img/Ünïcode-Icon.png" width="200">'
        '<img src="/img/café.jpg" width="200">'
        '<img src="/img/BLANK.gif" data-src="/img/real-photo.jpg">'
    )
    urls = [i.url for i in images(nodes_of(body))]
    assert urls == ["http://example.com/img/café.jpg", "http://example.com/img/real-photo.jpg"]


def test_declared_size_and_alt_kept():
    (img,) = images(nodes_of('<img src="a.jpg" width="640px" height="480" alt="  A  red\n bus ">'))
    assert (img.declared_width, img.declared_height, img.alt) == (640, 480, "A red bus")


def test_figcaption_becomes_alt_and_stays_in_the_text():
    body = f'<p>{PARA}</p><figure><img src="a.jpg"><figcaption>The harbour at dawn</figcaption></figure><p>{PARA}</p>'
    nodes = nodes_of(body)
    assert kinds(nodes) == "TITT"
    assert nodes[1].alt == "The harbour at dawn"
    assert nodes[2].text == "The harbour at dawn"


def test_alt_text_wins_over_figcaption():
    body = '<figure><img src="a.jpg" alt="Boats"><figcaption>The harbour</figcaption></figure>'
    assert images(nodes_of(body))[0].alt == "Boats"


def test_caption_block_after_image_names_it():
    body = '<div class="thumb"><a href="/f"><img src="a.jpg" width="220"></a><div class="thumbcaption">A view</div></div>'
    assert images(nodes_of(body))[0].alt == "A view"


def test_keep_alt_text_off():
    body = '<figure><img src="a.jpg" alt="Boats"><figcaption>The harbour</figcaption></figure>'
    assert images(nodes_of(body, keep_alt_text=False))[0].alt == ""


# ---------------------------------------------------------------------------------------------
# Boilerplate and hidden content


def test_nav_header_footer_aside_form_removed():
    body = (
        "<header><a href=/>Home</a> <a href=/about>About us</a></header>"
        "<nav><ul><li><a href=/a>Section A</a></li></ul></nav>"
        f"<main><p>{PARA}</p></main>"
        "<aside>Trending now</aside><form><label>Email</label><input></form>"
        "<footer>Copyright 2024 Example Corp</footer>"
    )
    out = " ".join(texts(nodes_of(body)))
    assert PARA in out
    for junk in ("Home", "Section A", "Trending", "Email", "Copyright"):
        assert junk not in out


@pytest.mark.parametrize(
    "cls",
    ['class="menu"', 'id="comments"', 'class="share-buttons"', 'class="cookie-banner"', 'class="related-posts"',
     'class="sidebar"', 'id="breadcrumbs"', 'class="newsletter-signup"'],
)
def test_boilerplate_classes_removed(cls):
    body = f"<article><p>{PARA}</p><div {cls}><p>Boilerplate words here</p></div><p>{PARA}</p></article>"
    assert "Boilerplate" not in " ".join(texts(nodes_of(body)))


def test_state_classes_are_not_boilerplate():
    body = f'<figure class="fig--has-shares"><img src="a.jpg" width="300"></figure><p>{PARA}</p>'
    assert len(images(nodes_of(body))) == 1


def test_article_header_keeps_its_lead_image():
    body = f'<header>Site menu</header><article><header><h1>Title</h1><img src="lead.jpg" width="600"></header><p>{PARA}</p></article>'
    nodes = nodes_of(body)
    assert [i.url for i in images(nodes)] == ["http://example.com/blog/lead.jpg"]
    assert "Site menu" not in " ".join(texts(nodes))


@pytest.mark.parametrize(
    "attr", ["hidden", 'aria-hidden="true"', 'style="display: none"', 'style="visibility:hidden;color:red"']
)
def test_hidden_elements_removed(attr):
    body = f'<p>{PARA}</p><div {attr}><p>Invisible text</p><img src="hidden.jpg"></div><p>Visible end.</p>'
    nodes = nodes_of(body)
    assert "Invisible" not in " ".join(texts(nodes))
    assert images(nodes) == []
    assert texts(nodes)[-1] == "Visible end."


def test_scripts_styles_and_templates_removed():
    body = f"<script>var x = 'code';</script><style>p {{color: red}}</style><template><p>tpl</p></template><p>{PARA}</p>"
    assert texts(nodes_of(body)) == [PARA]


def test_boilerplate_holding_most_of_the_page_is_kept():
    # ASP.NET wraps whole pages in one <form>; a blog engine calls its post list "widget blog".
    body = f'<form id="aspnetForm"><div class="widget blog"><p>{PARA}</p><p>{PARA}</p></div></form><footer>f</footer>'
    assert texts(nodes_of(body)) == [PARA, PARA]


def test_remove_boilerplate_off_keeps_navigation():
    body = f"<nav>Home About</nav><p>{PARA}</p>"
    assert "Home About" in texts(nodes_of(body, remove_boilerplate=False, main_content=False))


# ---------------------------------------------------------------------------------------------
# Structure and reading order


def test_reading_order_of_text_and_images():
    body = f'<h1>Title</h1><p>{PARA}</p><img src="1.jpg"><p>Middle words.</p><div><img src="2.jpg"></div><p>End.</p>'
    nodes = nodes_of(body)
    assert kinds(nodes) == "TTITIT"
    assert [i.url.rsplit("/", 1)[1] for i in images(nodes)] == ["1.jpg", "2.jpg"]
    assert texts(nodes) == ["Title", PARA, "Middle words.", "End."]


def test_inline_text_merged_and_blocks_separated():
    body = "<p>One <b>bold</b> and <a href=#>a link</a>,\n   spread   over lines.</p><div>Two<span> parts</span></div>"
    assert texts(nodes_of(body)) == ["One bold and a link, spread over lines.", "Two parts"]


def test_custom_elements_read_as_inline_on_every_page():
    # lexbor numbers custom elements per document: their names must not leak between pages.
    first = nodes_of("<my-card><p>First page.</p><x-note>note</x-note></my-card><p>After.</p>")
    second = nodes_of("<x-note><p>Second page.</p></x-note><my-card>card</my-card><nav>menu</nav><p>End.</p>")
    assert texts(first) == ["First page.", "note", "After."]
    assert texts(second) == ["Second page.", "card", "End."]


def test_br_breaks_lines_inside_a_paragraph():
    assert texts(nodes_of("<p>line one<br>line two<br><br>line three</p>")) == ["line one\nline two\nline three"]


def test_lists_become_one_node_with_one_item_per_line():
    body = "<h2>Steps</h2><ul><li>First</li><li>Second <i>item</i></li></ul><ol><li>A</li><li>B</li></ol>"
    assert texts(nodes_of(body)) == ["Steps", "First\nSecond item", "A\nB"]


def test_tables_become_rows_of_cells():
    body = "<table><tr><th>Name</th><th>Age</th></tr><tr><td>Ann</td><td>31</td></tr></table>"
    assert texts(nodes_of(body)) == ["Name | Age\nAnn | 31"]


def test_headings_are_their_own_nodes():
    assert texts(nodes_of("<h1>Big</h1>Loose text<h3>Small</h3>")) == ["Big", "Loose text", "Small"]


def test_pre_keeps_its_line_breaks():
    assert texts(nodes_of("<pre>def f():\n    return 1\n</pre>")) == ["def f():\n    return 1"]


def test_heading_repeating_the_title_is_dropped_and_kept_as_title():
    html = f"<html><head><title>Storm hits the coast | Daily News</title></head><body><h1>Storm hits the coast</h1><p>{PARA}</p></body></html>"
    nodes, title = extract_nodes(html, BASE)
    assert title == "Storm hits the coast | Daily News" and texts(nodes) == [PARA]
    nodes, _ = extract_nodes(html, BASE, ExtractConfig(drop_title_heading=False))
    assert texts(nodes) == ["Storm hits the coast", PARA]


def test_title_is_returned():
    _, title = extract_nodes("<html><head><title> My  page </title></head><body><p>x</p></body></html>", BASE)
    assert title == "My page"


# ---------------------------------------------------------------------------------------------
# Main content


def test_main_content_drops_teasers_and_link_lists():
    article = "".join(f"<p>{PARA} Sentence {i}, more words, more commas, and more text to score.</p>" for i in range(6))
    body = (
        f'<div class="content"><article>{article}<img src="in.jpg" width="500"></article></div>'
        '<div class="more"><a href="/1">Other story one</a><p>Short teaser.</p><img src="teaser.jpg" width="300"></div>'
    )
    nodes = nodes_of(body)
    out = " ".join(texts(nodes))
    assert "Sentence 5" in out and "Other story" not in out and "teaser" not in out.lower()
    assert [i.url.rsplit("/", 1)[1] for i in images(nodes)] == ["in.jpg"]


def test_short_pages_keep_everything():
    # No block stands out: a gallery or a shop page keeps all of its content.
    body = "".join(f'<div class="item"><img src="c{i}.jpg" width="200"><p>Book {i}</p></div>' for i in range(20))
    nodes = nodes_of(body)
    assert len(images(nodes)) == 20 and len(texts(nodes)) == 20


# ---------------------------------------------------------------------------------------------
# Limits


def test_html_too_large():
    with pytest.raises(ExtractionError) as e:
        extract_nodes(page("x" * 2000), BASE, limits=LimitsConfig(max_html_bytes=1000))
    assert e.value.reason == "html_too_large"


def test_html_size_counts_utf8_bytes():
    with pytest.raises(ExtractionError):
        extract_nodes(page("é" * 400), BASE, limits=LimitsConfig(max_html_bytes=800))


def test_deep_dom_is_cut_not_crashed():
    html = page("<div>" * 5000 + "deep text" + "</div>" * 5000 + f"<p>{PARA}</p>")
    nodes, _ = extract_nodes(html, BASE, limits=LimitsConfig(max_dom_depth=100))
    assert PARA in texts(nodes) and "deep text" not in " ".join(texts(nodes))


def test_parse_deadline_is_checked_during_the_walk():
    html = page("".join(f"<p>para {i} <b>x</b> <i>y</i></p>" for i in range(5000)))
    with pytest.raises(ExtractionError) as e:
        extract_nodes(html, BASE, limits=LimitsConfig(parse_timeout_s=1e-6))
    assert e.value.reason == "parse_timeout"


# ---------------------------------------------------------------------------------------------
# Documents and the Beam stage

PROV = Provenance("crawl.warc.gz", 10, 200, "2024-01-01T00:00:00Z", "<urn:uuid:1>")


def test_extract_document_is_valid_and_carries_provenance():
    doc = extract_document(Page(BASE, PROV, page(f'<p>{PARA}</p><img src="a.jpg" width="300">')))
    assert doc.url == BASE and doc.provenance == PROV and doc.title == "T"
    assert validate(to_json(doc)) == []
    assert [n.url for n in doc.images] == ["http://example.com/blog/a.jpg"]


def test_extract_document_without_text_is_no_content():
    with pytest.raises(ExtractionError) as e:
        extract_document(Page(BASE, PROV, page('<nav>Home</nav><img src="a.jpg">')))
    assert e.value.reason == "no_content"


def test_extract_documents_stage_outputs_documents_and_counted_rejects():
    pages = [
        Page("http://a.example/1", PROV, page(f'<p>{PARA}</p><img src="/x.jpg" width="300">')),
        Page("http://a.example/2", Provenance("crawl.warc.gz", 500, 100, "2024-01-01T00:00:00Z"), page("<script>x</script>")),
        Page("http://a.example/3", Provenance("crawl.warc.gz", 900, 100, "2024-01-01T00:00:00Z"), page("y" * 3000)),
    ]
    with TestPipeline() as p:
        out = p | beam.Create(pages) | ExtractDocuments(ExtractConfig(), LimitsConfig(max_html_bytes=2000))
        docs = out.documents | "Summarise" >> beam.Map(lambda d: (d.url, d.texts, [i.url for i in d.images]))
        assert_that(
            docs, equal_to([("http://a.example/1", [PARA, None], ["http://a.example/x.jpg"])]), label="CheckDocuments"
        )
        rejects = out.rejects | "RejectKeys" >> beam.Map(lambda r: (r.stage, r.reason, r.url, r.warc_record_offset))
        assert_that(
            rejects,
            equal_to([("extract", "no_content", "http://a.example/2", 500), ("extract", "html_too_large", "http://a.example/3", 900)]),
            label="CheckRejects",
        )
    result = p.result
    counters = {
        r.key.metric.name: r.committed
        for r in result.metrics().query(beam.metrics.MetricsFilter().with_namespace("m3w"))["counters"]
    }
    assert counters["extract.pages"] == 3
    assert counters["extract.documents"] == 1
    assert counters["extract.images_found"] == 1
    assert counters["extract.dropped_no_content"] == 1
    assert counters["extract.dropped_html_too_large"] == 1
    assert isinstance(Reject.of("extract", "x"), Reject) and isinstance(Document, type)
