"""Language ID: the language holding most of a document's characters, and its share."""
from __future__ import annotations

import pytest

from pipeline import langid
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
    with pytest.raises(ValueError, match="unknown language detector 'fasttext'"):
        langid.detect("hello", "fasttext")
