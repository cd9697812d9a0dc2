"""No filter crashes or hangs on arbitrary Unicode, empty text, or 1 MB of one repeated character."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import filters as F
from pipeline import langid
from pipeline.config import Config
from schemas.document import Document, ImageNode, Provenance, TextNode
from tests.pipeline.test_filters_fast import CFG, plain_words

ALL_CHECKS = F.node_checks(CFG.text_filters) + F.doc_checks(CFG.text_filters)

texts = st.text(st.characters(codec="utf-8"), max_size=3000) | st.text(alphabet=" \n\t.#…-•ab'", max_size=500)


def _document(parts: list[str]) -> Document:
    nodes = [TextNode(t) for t in parts] + [ImageNode("https://example.org/a.jpg")]
    return Document(url="https://example.org/p", provenance=Provenance("x.warc", 0, 1, ""), nodes=nodes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_every_measure_total_on_arbitrary_unicode(text):
    stats = F.TextStats(text)
    for c in ALL_CHECKS:
        v = c.measure(stats)
        assert v >= 0, c.name
        if c.name.endswith(("ratio", "repetition", "frac")) and c.name != "gopher_max_symbol_word_ratio":
            assert v <= 1.0 + 1e-9, (c.name, v)
    lang, score = langid.detect(text)
    assert 0.0 <= score <= 1.0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts, min_size=1, max_size=6), st.sampled_from(["resiliparse", "py3langid"]))
def test_filter_document_total_on_arbitrary_documents(parts, detector):
    cfg = Config()
    cfg.language.detector = detector
    kept, rejects = F.filter_document(_document(parts), cfg)
    assert kept is not None or rejects
    assert all(r.stage == "text_filter" and r.reason for r in rejects)


@pytest.mark.parametrize("text", ["", " ", "\n\n\n"])
def test_empty_text_measures_zero_and_document_falls_on_language(text):
    for c in ALL_CHECKS:
        expected = 1.0 if text and "special_char" in c.name else 0  # whitespace is special
        assert c.measure(F.TextStats(text)) == expected, c.name
    kept, rejects = F.filter_document(_document([text]), Config())
    assert kept is None and rejects[-1].reason == "language" and rejects[-1].detail == "none 0.000"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("unit", ["a", " ", "\n", ".", "#", "é", "😀", "ab "])
def test_one_megabyte_of_repetition_measured_in_linear_time(unit):
    text = unit * (1_000_000 // len(unit))
    stats = F.TextStats(text)
    start = time.perf_counter()
    values = {c.name: c.measure(stats) for c in ALL_CHECKS}
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"{elapsed:.1f}s for 1 MB of {unit!r}"
    if unit in ("a", "é", "😀"):
        assert values["node_max_char_10gram_repetition"] == 1.0  # one 10-gram everywhere
    if unit == "ab ":
        assert values["doc_max_word_repetition"] == 1.0
    kept, rejects = F.filter_document(_document([text]), Config())
    assert kept is None and rejects


_reference_words = plain_words  # the definition: whitespace tokens, lower-cased, special characters stripped


@settings(max_examples=200, deadline=None)
@given(st.lists(texts, max_size=8))
def test_vectorised_measures_equal_their_definitions(parts):
    assert [F.words(t) for t in parts] == [_reference_words(t) for t in parts]
    assert F.special_char_counts(parts) == [sum(map(F.is_special, t)) for t in parts]
    assert [F.alpha_words_ratio(t) for t in parts] == [
        sum(any(c.isalpha() for c in tok) for tok in t.split()) / len(t.split())
        if t.split() else 0.0
        for t in parts
    ]
    assert F.char_ngram_repetitions(parts, 10) == [F.char_ngram_repetition(t, 10) for t in parts]
    ws = [F.words(t) for t in parts]
    assert F.word_ngram_repetitions(ws, 5) == [F.word_ngram_repetition(w, 5) for w in ws]


@settings(max_examples=100, deadline=None)
@given(st.lists(texts, max_size=8))
def test_batched_node_chain_gives_each_node_its_first_failure(parts):
    checks = F.node_checks(Config().text_filters)
    batched = F.first_failures(checks, [F.TextStats(t) for t in parts])
    for text, got in zip(parts, batched):
        stats = F.TextStats(text)
        want = next(((c, c.measure(stats)) for c in checks if not c.passes(c.measure(stats))), None)
        assert (got and (got[0].name, got[1])) == (want and (want[0].name, want[1]))
