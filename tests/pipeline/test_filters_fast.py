"""The compiled chain (``pipeline/_textchain.c``, what ``filter_document`` runs) measures exactly
what the plain definitions say, node by node and for the document, on real extracted pages and on
arbitrary Unicode; its verdicts and reject details equal those of the reference chain
(``TextStats`` measures, as ``build-m3w explain`` prints them)."""
from __future__ import annotations

import copy
import dataclasses
import gzip
import math
import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import filters as F
from pipeline.config import Config, load_config
from pipeline.explain import explain_document
from pipeline.extract import ExtractionError, extract_document
from pipeline.records import Page
from pipeline.warc import iter_warc
from schemas.document import Document, ImageNode, Provenance, TextNode
from tests.conftest import shared_path

# Every measure compared: the obelics preset's checks plus the Gopher rules of the m3w preset.
CFG = load_config(preset="obelics")
for _f in dataclasses.fields(CFG.text_filters):
    if getattr(CFG.text_filters, _f.name) is None:
        setattr(CFG.text_filters, _f.name, getattr(Config().text_filters, _f.name))
NODE_CHECKS, DOC_CHECKS = F.configured_checks(CFG.text_filters)
STOP = F.load_word_list(F.STOPWORDS_FILE)
FLAGGED = F.load_word_list(F.FLAGGED_WORDS_FILE)
COMMON = F.wordfreq_common_words()


# ---------------------------------------------------------------------------------------------
# Plain definitions: strings, tuples and Counters, no hashing, no numpy.


def plain_words(text: str) -> list[str]:
    out = []
    for tok in text.lower().replace("’", "'").split():
        i, j = 0, len(tok)
        while i < j and F.is_special(tok[i]):
            i += 1
        while j > i and F.is_special(tok[j - 1]):
            j -= 1
        if i < j:
            out.append(tok[i:j])
    return out


def plain_char_rep(text: str, n: int) -> float:
    grams = Counter(text[i : i + n] for i in range(len(text) - n + 1))
    if not grams:
        return 0.0
    k = math.isqrt(len(grams))
    top = sorted((c for c in grams.values() if c > 1), reverse=True)[:k]
    return sum(top) / (len(text) - n + 1)


def _grams(ws: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]


def plain_word_rep(ws: list[str], n: int) -> float:
    grams = _grams(ws, n)
    if not grams:
        return 0.0
    return sum(c for c in Counter(grams).values() if c > 1) / len(grams)


def plain_top_ngram(ws: list[str], n: int, text_len: int) -> float:
    grams = _grams(ws, n)
    if not grams or text_len <= 0:
        return 0.0
    counts = Counter(grams)
    top = max(counts.values())
    if top < 2:
        return 0.0
    first = next(g for g in grams if counts[g] == top)
    return min(1.0, len(" ".join(first)) * top / text_len)


def plain_dup_ngram(ws: list[str], n: int, text_len: int) -> float:
    if len(ws) < n or text_len <= 0:
        return 0.0
    seen, repeated, i = set(), 0, 0
    while i <= len(ws) - n:
        g = tuple(ws[i : i + n])
        if g in seen:
            repeated += len(" ".join(g))
            i += n
        else:
            seen.add(g)
            i += 1
    return min(1.0, repeated / text_len)


def obelics_punctuation_ratio(text: str, min_nb_words: int = -1) -> float:
    """OBELICS's compute_punctuation_ratio, step by step: its regex of word runs and marks."""
    marks = [",", ";", ":", "?", "!", "."]
    tokens = re.findall(r"[\w']+|[" + "".join(marks) + "]", text)
    if not tokens:
        return 0.0
    if min_nb_words > 0 and len(tokens) < min_nb_words:
        return 1.0
    return len([t for t in tokens if t in marks]) / len(tokens)


def _share(items: list[str], vocab) -> float:
    return sum(w in vocab for w in items) / len(items) if items else 0.0


def _special(text: str) -> float:
    return sum(map(F.is_special, text)) / len(text) if text else 0.0


def plain_node_values(text: str) -> dict[str, float]:
    ws = plain_words(text)
    return {
        "node_min_words": len(ws),
        "node_max_words": len(ws),
        "node_max_special_char_ratio": _special(text),
        "node_min_stopword_ratio": _share(ws, STOP),
        "node_max_flagged_word_ratio": _share(ws, FLAGGED),
        "node_min_punctuation_ratio": obelics_punctuation_ratio(text, 12),
        "node_min_common_word_ratio": _share(ws, COMMON),
        "node_max_char_10gram_repetition": plain_char_rep(text, 10),
        "node_max_word_5gram_repetition": plain_word_rep(ws, 5),
    }


def plain_doc_values(text: str) -> dict[str, float]:
    ws = plain_words(text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    tokens = text.split()
    paras = F.split_paragraphs(text)
    all_lines = F.split_lines(text)
    out = {
        "doc_min_words": len(ws),
        "doc_max_words": len(ws),
        "doc_max_special_char_ratio": _special(text),
        "doc_min_stopword_ratio": _share(ws, STOP),
        "doc_max_flagged_word_ratio": _share(ws, FLAGGED),
        "doc_min_punctuation_ratio": obelics_punctuation_ratio(text),
        "doc_min_common_word_ratio": _share(ws, COMMON),
        "gopher_min_stop_words": sum(w in F.GOPHER_STOP_WORDS for w in ws),
        "gopher_min_mean_word_length": sum(map(len, ws)) / len(ws) if ws else 0.0,
        "gopher_max_mean_word_length": sum(map(len, ws)) / len(ws) if ws else 0.0,
        "gopher_max_symbol_word_ratio": (
            max(text.count("#"), text.count("...") + text.count("…")) / len(ws) if ws else 0.0
        ),
        "gopher_max_bullet_lines_ratio": _share([ln.lstrip()[0] for ln in lines], "•-*·‣◦▪"),
        "gopher_max_ellipsis_lines_ratio": (
            sum(ln.rstrip().endswith(("...", "…")) for ln in lines) / len(lines) if lines else 0.0
        ),
        "gopher_min_alpha_words_ratio": (
            sum(any(c.isalpha() for c in t) for t in tokens) / len(tokens) if tokens else 0.0
        ),
        "gopher_max_dup_para_frac": F.dup_frac(paras),
        "gopher_max_dup_para_char_frac": F.dup_char_frac(paras, len(text)),
        "gopher_max_dup_line_frac": F.dup_frac(all_lines),
        "gopher_max_dup_line_char_frac": F.dup_char_frac(all_lines, len(text)),
        "doc_max_word_repetition": plain_word_rep(ws, 5),
        "doc_max_char_repetition": plain_char_rep(text, 10),
    }
    for n in CFG.text_filters.gopher_top_ngram_char_frac:
        out[f"gopher_top_{n}gram_char_frac"] = plain_top_ngram(ws, n, len(text))
    for n in CFG.text_filters.gopher_dup_ngram_char_frac:
        out[f"gopher_dup_{n}gram_char_frac"] = plain_dup_ngram(ws, n, len(text))
    return out


# ---------------------------------------------------------------------------------------------
# The compiled chain, every value (no short-circuit)

CHAIN = F.compiled_chain(NODE_CHECKS, DOC_CHECKS)


def compiled_values(texts: list[str]) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Every node check's value per node, and every document check's value on the nodes that
    pass all node checks."""
    nodes, doc = CHAIN.values(texts)
    return (
        [dict(zip([c.name for c in NODE_CHECKS], row)) for row in nodes],
        dict(zip([c.name for c in DOC_CHECKS], doc)),
    )


def assert_document_matches(texts: list[str]) -> None:
    fast_nodes, got = compiled_values(texts)
    for text, values in zip(texts, fast_nodes):
        assert values == plain_node_values(text), text[:200]
        stats = F.TextStats(text)
        assert values == {c.name: c.measure(stats) for c in NODE_CHECKS}
    kept = [all(c.passes(v[c.name]) for c in NODE_CHECKS) for v in fast_nodes]
    kept_text = "\n\n".join(t for t, k in zip(texts, kept) if k)
    assert got == plain_doc_values(kept_text), kept_text[:200]
    stats = F.TextStats(kept_text)
    assert got == {c.name: c.measure(stats) for c in DOC_CHECKS}


def _document(parts: list[str], url: str = "https://example.org/p") -> Document:
    nodes = [TextNode(t) for t in parts] + [ImageNode("https://example.org/a.jpg")]
    return Document(url=url, provenance=Provenance("x.warc", 0, 1, ""), nodes=nodes)


def assert_same_verdict(doc: Document, cfg: Config) -> None:
    """``filter_document`` (fast path) against ``explain_document`` (every ``TextStats`` measure)."""
    kept, rejects = F.filter_document(doc, cfg)
    ref = explain_document(doc, cfg)
    assert (kept is None) == (ref["verdict"] == "dropped"), doc.url
    if kept is None:
        assert (rejects[-1].reason, rejects[-1].detail) == (ref["reason"], ref["detail"]), doc.url
    if ref["language"]["pass"] and not ref["url_blocklists"]["blocked"]:
        dropped = {n["index"]: n for n in ref["nodes"] if n["verdict"] == "dropped"}
        node_rejects = rejects[: len(dropped)]
        assert [r.reason for r in node_rejects] == [dropped[i]["reason"] for i in sorted(dropped)]
        for r, i in zip(node_rejects, sorted(dropped)):
            check = next(c for c in NODE_CHECKS if c.name == r.reason)
            value = next(c["value"] for c in dropped[i]["checks"] if c["filter"] == r.reason)
            assert r.detail == F.detail(check, value, i)
        if kept is not None:
            assert [n for n in kept.nodes] == [doc.nodes[n["index"]] for n in ref["nodes"] if n["verdict"] == "kept"]


# ---------------------------------------------------------------------------------------------
# Real pages


def _real_documents() -> list[Document]:
    docs = []
    for warc, every in (("pydocs.warc.gz", 8), ("handbook-fr-de.warc.gz", 10)):
        pages = [p for p in iter_warc(str(shared_path("warc", "local_wget_crawls", warc))) if isinstance(p, Page)]
        docs += _extract(pages[::every])
    root = shared_path("extraction", "article_benchmark", "html")
    pages = []
    for path in sorted(root.glob("*.html.gz"))[::4]:
        html = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        pages.append(Page(f"https://bench.example/{path.name}", Provenance(str(path), 0, 1, ""), html))
    return docs + _extract(pages)


def _extract(pages: list[Page]) -> list[Document]:
    out = []
    for p in pages:
        try:
            out.append(extract_document(p))
        except ExtractionError:
            pass  # pages without text are not filter input
    return out


@pytest.fixture(scope="module")
def real_documents() -> list[Document]:
    return _real_documents()


def test_fast_measures_equal_plain_definitions_on_real_pages(real_documents):
    assert len(real_documents) >= 90
    for d in real_documents:
        assert_document_matches([n.text for n in d.nodes if isinstance(n, TextNode)])


def test_fast_chain_verdicts_equal_reference_chain_on_real_pages(real_documents):
    no_language = copy.deepcopy(CFG)
    no_language.language.keep = None  # so French and German pages reach every text filter
    no_language.language.min_score = None
    verdicts = Counter()
    for d in real_documents:
        assert_same_verdict(d, CFG)
        assert_same_verdict(d, no_language)
        verdicts[F.filter_document(d, no_language)[0] is not None] += 1
    assert verdicts[True] >= 20 and verdicts[False] >= 20  # both outcomes exercised


# ---------------------------------------------------------------------------------------------
# Arbitrary text: casing corner cases ("İ", final "Σ"), astral characters, emoji, "’"

# (a lone surrogate is what surrogateescape decoding leaves in a str)
corners = st.sampled_from(["İstanbul", "ΟΔΟΣ ΟΔΟΣ", "’tis", "don’t", "😀😀", "𐐀𐐨", "٣٤", "a\u00a0b", "x\x1cy", "ǅ", "a\udcffb"])
texts = (
    st.text(st.characters(codec="utf-8"), max_size=400)
    | st.text(alphabet=" \n\t.#…-•ab'’İΣ😀3", max_size=300)
    | st.lists(corners | st.sampled_from(["the", "and", "of", "a", "b", " ", "\n", "..."]), max_size=60).map(" ".join)
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts, max_size=6))
def test_fast_measures_equal_plain_definitions_on_arbitrary_text(parts):
    assert_document_matches(parts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts, min_size=1, max_size=6))
def test_fast_chain_verdicts_equal_reference_chain_on_arbitrary_text(parts):
    cfg = copy.deepcopy(CFG)
    cfg.language.keep = None
    cfg.language.min_score = None
    assert_same_verdict(_document(parts), cfg)


# ---------------------------------------------------------------------------------------------
# The character table


def test_character_classes_of_every_code_point_match_the_word_definition():
    """Astral characters are classified by rule in C: special exactly where the regex says, and
    every astral letter is lower-cased by ``str.lower``. A text of every astral code point (in
    chunks) measures as the plain definitions say."""
    astral = [chr(c) for c in range(0x10000, 0x110000) if not 0xD800 <= c < 0xE000]
    specials = [c for c in astral if F.is_special(c)]
    assert specials and len(specials) < len(astral)
    text = " ".join("".join(astral[i : i + 7]) for i in range(0, len(astral), 7))
    node_values, _ = compiled_values([text])
    assert node_values[0]["node_max_special_char_ratio"] == sum(map(F.is_special, text)) / len(text)
    assert node_values[0]["node_min_words"] == len(plain_words(text))
    assert node_values[0]["node_min_punctuation_ratio"] == obelics_punctuation_ratio(text, 12)
    runs = re.findall(r"[\w']+", text)
    assert len(runs) > 1000  # astral letters and digits are word characters to \w
    bmp = "".join(chr(c) for c in range(0x20, 0xD800)) + "".join(chr(c) for c in range(0xE000, 0x10000))
    assert_document_matches([bmp[i : i + 500] for i in range(0, len(bmp), 500)])


def test_threads_filter_concurrently_with_the_same_results(real_documents):
    """Each thread gets its own compiled chain (its scratch buffers are per chain), so a Beam
    worker running bundles on several threads gets exactly the single-threaded results."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = copy.deepcopy(CFG)
    cfg.language.keep = None
    cfg.language.min_score = None
    expected = [F.filter_document(d, cfg) for d in real_documents]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda d: F.filter_document(d, cfg), real_documents * 3))
    assert got == expected * 3


def test_one_chain_refuses_a_second_caller_while_busy():
    """A chain shared across threads would mix scratch buffers: a re-entrant call is an error,
    never wrong values. A text node whose str.lower is a Python call is where a thread could
    switch; this reaches that path from inside the call through a str subclass."""

    class Reenter(str):
        def lower(self):
            with pytest.raises(RuntimeError, match="one call at a time"):
                CHAIN.run(["the coast"])
            return str.lower(self)

    nodes, _ = CHAIN.values([Reenter("İstanbul is the city of the two coasts and the sea")])
    assert nodes[0][0] == len(plain_words("İstanbul is the city of the two coasts and the sea"))


def test_a_huge_document_does_not_pin_its_memory():
    """The chain keeps its buffers between calls, except what one huge document needed: a
    4-million-character document (about 250 MB of n-gram table) leaves the worker's memory where
    it was."""
    import psutil

    chain = F.compiled_chain([], DOC_CHECKS)  # every node kept: the document is all the text
    chain.run(["the coast of the island is long and cold"])
    before = psutil.Process().memory_info().rss
    words = [f"w{i}" for i in range(600_000)]
    _, doc = chain.values([" ".join(words[i : i + 1000]) for i in range(0, len(words), 1000)])
    assert doc[0] == len(words)
    assert psutil.Process().memory_info().rss - before < 100 * 2**20
