"""The default filter chain on real crawled pages: French/German handbook pages fall on language,
real English articles and library reference pages survive."""
from __future__ import annotations

import gzip
import json

import pytest

from pipeline import filters as F
from pipeline import langid
from pipeline.config import Config
from pipeline.extract import ExtractionError, extract_document
from pipeline.records import Page
from pipeline.warc import iter_warc
from schemas.document import Document, Provenance
from tests.conftest import shared_path


def _warc_documents(path, url_suffixes: tuple[str, ...] = ("",)) -> list[Document]:
    docs = []
    for item in iter_warc(str(path)):
        if isinstance(item, Page) and item.url.endswith(url_suffixes):
            try:
                docs.append(extract_document(item))
            except ExtractionError:
                pass  # pages without text: extraction's own tests cover them
    return docs


@pytest.fixture(scope="module")
def handbook_docs() -> list[Document]:
    return _warc_documents(shared_path("warc", "local_wget_crawls", "handbook-fr-de.warc.gz"))


def _foreign_share(d: Document) -> float:
    """Share of the page's paragraph text that py3langid (a different detector from the default)
    reads as French or German, paragraph by paragraph."""
    return langid.text_share(d.texts, ("fr", "de"), "py3langid")


def test_french_and_german_handbook_pages_dropped_by_language(handbook_docs):
    pages = [d for d in handbook_docs if "/fr-FR/" in d.url or "/de-DE/" in d.url]
    assert len(pages) >= 250
    # The translation is incomplete: some pages are still (mostly) the English original. The
    # ones whose text is mostly French or German must fall on language.
    foreign = [d for d in pages if _foreign_share(d) >= 0.5]
    assert len(foreign) >= 150
    cfg = Config()
    dropped = []
    for d in foreign:
        kept, rejects = F.filter_document(d, cfg)
        if kept is None and rejects[-1].reason in ("language", "language_score"):
            dropped.append(d.url)
    assert len(dropped) / len(foreign) >= 0.95, f"only {len(dropped)} of {len(foreign)} dropped by language"


def test_untranslated_handbook_page_is_read_as_english(handbook_docs):
    # sect.kali.html is identical in both translations: the untranslated English original.
    (page,) = [d for d in handbook_docs if d.url.endswith("/fr-FR/sect.kali.html")]
    lang, score = langid.detect([t for t in page.texts if t])
    assert lang == "en" and score >= 0.9


ENGLISH_ARTICLES = [  # article-extraction-benchmark file names: news, tech and science articles
    "04a6711caa7c687592777718866e781e976e0fe684faebe8b3cedcef8cd0ea34",  # nytimes.com opinion
    "06e5123e4ef7cfb4533250dc45d1e03d0838fc66223f45c583c4d12f48b4da85",  # venturebeat.com
    "06ee193de4bd611f7fafbab0c59b0f6fe3495093516720632cd093b24c7a0e98",  # slashgear.com
    "08f793762792bd252c75fb57544cdf506ffcc04785136cb87503f02364b82b56",  # cbssports.com
    "098bb3e96c0acdf36efdcde45fb9cca3f8c82c7cb2071b76097a1b96155f1eb2",  # latimes.com
    "14cc2a0ca59c62a8c9f205a171e9ccf4ef4cf69b0c642f51c8c65c051b39024f",  # sciencealert.com
    "232a43fb15abde807427b2a7bf4f772e27b8760554370956d8291df4e8166dbf",  # macrumors.com
]


def _article(name: str) -> Document:
    root = shared_path("extraction", "article_benchmark")
    url = json.loads((root / "ground-truth.json").read_text())[name]["url"]
    path = root / "html" / f"{name}.html.gz"
    html = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
    return extract_document(Page(url, Provenance(str(path), 0, path.stat().st_size, ""), html))


@pytest.mark.parametrize("name", ENGLISH_ARTICLES)
def test_real_english_articles_survive_the_default_chain(name):
    d = _article(name)
    kept, rejects = F.filter_document(d, Config())
    assert kept is not None, f"{d.url} dropped: {rejects[-1].reason} {rejects[-1].detail}"
    assert kept.language == "en" and kept.language_score >= 0.9
    # Paragraph filters trim boilerplate, not the article: most of the text stays.
    assert len(kept.text) >= 0.7 * len(d.text)


def test_python_reference_pages_survive_the_default_chain():
    # (os.path.html repeats "Changed in version 3.6: Accepts a path-like object." so often that
    # Gopher's duplicate 7-gram rule drops it, as MassiveWeb would.)
    wanted = tuple(f"/library/{n}.html" for n in ("heapq", "random", "functions", "csv"))
    pages = _warc_documents(shared_path("warc", "local_wget_crawls", "pydocs.warc.gz"), wanted)
    assert len(pages) == 4
    cfg = Config()
    for d in pages:
        kept, rejects = F.filter_document(d, cfg)
        assert kept is not None, f"{d.url} dropped: {rejects[-1].reason} {rejects[-1].detail}"
        assert kept.language == "en"
