"""The DOM walker on real pages: quality floors on human ground truth, and known captures from WARCs.

Floors sit a little below the figures in docs/bench/extraction.md (benchmarks/extraction.py), so a
change that loses quality fails here instead of passing silently.
"""
from __future__ import annotations

import pytest

from benchmarks.extraction import image_prf, load_sets, ours, text_f1
from pipeline.config import ExtractConfig, LimitsConfig
from pipeline.extract import extract_document
from pipeline.records import ImageRecord, Page
from pipeline.urls import normalize_url
from pipeline.warc import iter_warc
from schemas.document import ImageNode, TextNode
from tests.conftest import shared_path

# Measured: article 0.953, readability text 0.940, readability images F1 0.826 (docs/bench/extraction.md).
ARTICLE_TEXT_F1_FLOOR = 0.945
READABILITY_TEXT_F1_FLOOR = 0.93
READABILITY_IMAGE_F1_FLOOR = 0.81


@pytest.fixture(scope="module")
def sets():
    return load_sets(shared_path("extraction"))


def test_article_benchmark_text_f1_floor(sets):
    run = ours(ExtractConfig(), LimitsConfig())
    rows = sets["article"]
    f1 = sum(text_f1(run(r["html"], r["url"])[0], r["gold_text"]) for r in rows) / len(rows)
    assert f1 >= ARTICLE_TEXT_F1_FLOOR, f"article_benchmark text F1 {f1:.3f}"


def test_readability_text_and_image_floors(sets):
    run = ours(ExtractConfig(), LimitsConfig())
    text, imgs = [], []
    for r in sets["readability"]:
        t, urls = run(r["html"], r["url"])
        text.append(text_f1(t, r["gold_text"]))
        prf = image_prf(urls, r["gold_images"])
        if prf is not None:
            imgs.append(prf[2])
    assert sum(text) / len(text) >= READABILITY_TEXT_F1_FLOOR, f"readability text F1 {sum(text) / len(text):.3f}"
    assert sum(imgs) / len(imgs) >= READABILITY_IMAGE_F1_FLOOR, f"readability image F1 {sum(imgs) / len(imgs):.3f}"


def _one_page(path):
    pages = [i for i in iter_warc(str(path)) if isinstance(i, Page)]
    images = [i for i in iter_warc(str(path)) if isinstance(i, ImageRecord)]
    return pages, images


def test_mona_lisa_text_in_reading_order_with_images_in_place():
    path = shared_path("warc", "ukwa_webarchive_discovery", "wikipedia-mona-lisa", "flashfrozen-jwat-recompressed.warc.gz")
    pages, captured = _one_page(path)
    page = next(p for p in pages if p.url == "http://en.wikipedia.org/wiki/Mona_Lisa")
    doc = extract_document(page)
    assert doc.title.startswith("Mona Lisa")
    nodes = doc.nodes

    def index(pred, what):
        for i, n in enumerate(nodes):
            if pred(n):
                return i
        raise AssertionError(f"{what} not found")

    def text_at(s):
        return index(lambda n: isinstance(n, TextNode) and s in n.text, repr(s))

    def image_at(s):
        return index(lambda n: isinstance(n, ImageNode) and s in n.url, repr(s))

    # Article text in reading order.
    lead = text_at("is a half-length portrait of a woman by the Italian artist Leonardo da Vinci")
    history = text_at("Leonardo da Vinci began painting the Mona Lisa in 1503 or 1504")
    theft_heading = index(lambda n: isinstance(n, TextNode) and n.text == "Theft and vandalism", "Theft heading")
    theft = text_at("The painting's fame was emphasized when it was stolen on 21 August 1911")
    legacy = text_at("The avant-garde art world has made note")
    assert lead < history < theft_heading < theft < legacy
    # Images where the page shows them: the infobox portrait before the lead paragraph, the 1911
    # photo of the empty wall in the theft section, with its caption as alt text.
    assert image_at("from_C2RMF_natural_color.jpg") < lead
    stolen = image_at("Mona_Lisa_stolen-1911.jpg")
    assert theft_heading < stolen < theft
    assert nodes[stolen].alt == "Vacant wall in the Salon Carré, Louvre"
    assert history < image_at("Mona_Lisa_detail_hands.jpg") < legacy
    # Every JPEG the crawl captured is a content image of the page; the skin's PNGs are not.
    ours = {normalize_url(n.url) for n in doc.images}
    jpegs = {normalize_url(i.url) for i in captured if i.content_type == "image/jpeg"}
    assert len(jpegs) == 9 and jpegs <= ours
    for chrome in ("poweredby_mediawiki", "wikimedia-button", "Wiki.png", "search-ltr.png", "magnify-clip"):
        assert not any(chrome in u for u in ours), chrome
    # Site chrome is gone.
    text = doc.text
    for junk in ("Main page", "Random article", "Personal tools", "Privacy policy", "[edit]", "Retrieved from"):
        assert junk not in text, junk


def test_books_toscrape_keeps_all_twenty_covers_in_order():
    pages, captured = _one_page(shared_path("warc", "node_warc_tests", "books.toscrape.warc"))
    (page,) = pages
    doc = extract_document(page)
    covers = [normalize_url(i.url) for i in captured]
    assert [normalize_url(n.url) for n in doc.images] == covers
    # Each cover is followed by its title: the interleaving a shop page shows.
    first = next(i for i, n in enumerate(doc.nodes) if isinstance(n, ImageNode))
    assert doc.nodes[first].alt == "A Light in the Attic"
    assert doc.nodes[first + 1].text == "A Light in the ..."
