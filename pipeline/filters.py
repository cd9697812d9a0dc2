"""Text quality filters: OBELICS paragraph/document rules, Gopher quality and repetition rules,
flagged words, URL blocklists and language identification.

Layout:
- pure measures on strings and word lists (unit-tested on hand-written text);
- ``Check``: one named threshold applied to one measure; its name is the config key and the
  reject reason, so a user who sees ``node_min_stopword_ratio`` in ``rejects/`` finds the knob;
- ``node_checks`` / ``doc_checks``: the configured chains, cheapest first;
- ``filter_document``: the whole chain on one ``Document`` (pure; no Beam);
- ``FilterText``: the Beam composite.

Order inside ``filter_document``: URL blocklists, then language ID on the unfiltered text (the
stop-word rules below are English lists, so running them first would empty a French page and hide
the real reason), then paragraph filters, then document filters on what is left.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipeline import langid
from pipeline.config import Config, LanguageConfig, TextFilterConfig
from pipeline.records import Reject
from schemas.document import Document, TextNode

STAGE = "text_filter"
DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
STOPWORDS_FILE = os.path.join(DATA_DIR, "stopwords_en.txt")
FLAGGED_WORDS_FILE = os.path.join(DATA_DIR, "flagged_words_en.txt")

# ---------------------------------------------------------------------------------------------
# Tokens

# OBELICS/BLOOM count punctuation, digits, whitespace and common typographic symbols and emoji as
# "special characters"; the same set is stripped from both ends of each word.
_TYPOGRAPHIC = "“”‘’«»‹›„‚–—―‐‑‒…•·°±×÷§¶©®™†‡′″¦¬¯´¸¨¡¿€£¥¢¤½¼¾⁄→←↑↓↔⇒■□▪▫●○◆◇★☆✓✔✗✘"
SPECIAL_CHARACTERS = frozenset(string.punctuation + string.digits + string.whitespace + _TYPOGRAPHIC)
_STRIP_CHARS = "".join(sorted(SPECIAL_CHARACTERS))
_SPECIAL_RE = re.compile(
    "[" + re.escape(string.punctuation + _TYPOGRAPHIC) + r"\s\d"
    + "\u2600-\u27bf\U0001f000-\U0001faff\ufe0f]"
)
_EMOJI_STRIP = "".join(chr(c) for c in (*range(0x2600, 0x27C0), 0xFE0F))

# Gopher's stop-word rule: a real English text has at least two of these (MassiveText, datatrove).
GOPHER_STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])


def words(text: str) -> list[str]:
    """OBELICS words: whitespace-split, lower-cased, special characters stripped from both ends,
    empty words dropped; the typographic apostrophe is folded to ``'`` so "don’t" is a stop word."""
    out = []
    for w in text.lower().replace("’", "'").split():
        w = w.strip(_STRIP_CHARS)
        if w and w[-1] > "\u2000":  # rare: trailing emoji
            w = w.strip(_EMOJI_STRIP)
        if w:
            out.append(w)
    return out


def word_count(text: str) -> int:
    return len(words(text))


def load_word_list(path: str) -> frozenset[str]:
    """One lower-case entry per line; blank lines and ``#`` comments ignored."""
    return _load_word_list(os.path.abspath(path))


@functools.lru_cache(maxsize=16)
def _load_word_list(path: str) -> frozenset[str]:
    with open(path, encoding="utf-8") as f:
        return frozenset(
            line.strip().lower() for line in f if line.strip() and not line.lstrip().startswith("#")
        )


# ---------------------------------------------------------------------------------------------
# Pure measures. Each returns 0 (or the neutral value) on empty input, never raises.


def mean_word_length(ws: list[str]) -> float:
    return sum(map(len, ws)) / len(ws) if ws else 0.0


def special_char_ratio(text: str) -> float:
    """Share of characters that are punctuation, digits, whitespace, typographic symbols or emoji."""
    if not text:
        return 0.0
    return len(_SPECIAL_RE.findall(text)) / len(text)


def word_ratio(ws: list[str], vocabulary: frozenset[str]) -> float:
    """Share of words found in ``vocabulary`` (stop-word ratio, flagged-word ratio)."""
    if not ws:
        return 0.0
    return sum(1 for w in ws if w in vocabulary) / len(ws)


def gopher_stop_word_count(ws: list[str]) -> int:
    """How many words are among {the, be, to, of, and, that, have, with}."""
    return sum(1 for w in ws if w in GOPHER_STOP_WORDS)


def symbol_word_ratio(text: str, n_words: int) -> float:
    """Gopher: max of the ``#``-to-word and ellipsis-to-word ratios (both share one threshold)."""
    if n_words <= 0:
        return 0.0
    hashes = text.count("#")
    ellipses = text.count("...") + text.count("…")
    return max(hashes, ellipses) / n_words


def _content_lines(text: str) -> list[str]:
    # Paragraphs are joined by blank lines; counting those would halve every line ratio.
    return [ln for ln in text.splitlines() if ln.strip()]


def bullet_lines_ratio(text: str) -> float:
    """Gopher: share of non-blank lines starting with a bullet (``•``, ``-``, ``*``, ``·``)."""
    lines = _content_lines(text)
    if not lines:
        return 0.0
    return sum(1 for ln in lines if ln.lstrip()[0] in "•-*·‣◦▪") / len(lines)


def ellipsis_lines_ratio(text: str) -> float:
    """Gopher: share of non-blank lines ending with ``...`` or ``…``."""
    lines = _content_lines(text)
    if not lines:
        return 0.0
    return sum(1 for ln in lines if ln.rstrip().endswith(("...", "…"))) / len(lines)


def alpha_words_ratio(text: str) -> float:
    """Gopher: share of whitespace-separated tokens containing at least one letter."""
    toks = text.split()
    if not toks:
        return 0.0
    return sum(1 for t in toks if t.isalpha() or any(c.isalpha() for c in t)) / len(toks)


# Random odd 64-bit multipliers for window hashes of code points / word ids. Fixed seed: the same
# text always measures the same; a collision needs ~2^32 distinct windows, far beyond any document.
_MULTIPLIERS = np.random.default_rng(20230601).integers(1, 2**63, size=64, dtype=np.uint64) | np.uint64(1)


def _window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """64-bit hash of every length-``n`` window of ``ids`` (uint64), shape (len(ids)-n+1,)."""
    m = len(ids) - n + 1
    with np.errstate(over="ignore"):
        h = ids[:m] * _MULTIPLIERS[0]
        for k in range(1, n):
            h = h + ids[k : k + m] * _MULTIPLIERS[k]
    return h


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)


def _word_ids(ws: list[str]) -> np.ndarray:
    index: dict[str, int] = {}
    return np.fromiter((index.setdefault(w, len(index)) for w in ws), dtype=np.uint64, count=len(ws)) + np.uint64(1)


def _obelics_char_ratio(counts: np.ndarray) -> float:
    # OBELICS/BLOOM: the top floor(sqrt(#distinct)) n-grams, but never counting singletons.
    if counts.size == 0:
        return 0.0
    singles = int((counts == 1).sum())
    k = min(int(np.sqrt(counts.size)), counts.size - singles)
    if k <= 0:
        return 0.0
    top = np.partition(counts, counts.size - k)[counts.size - k :]
    return float(top.sum() / counts.sum())


def char_ngram_repetition(text: str, n: int = 10) -> float:
    """OBELICS character repetition: share of character n-grams taken by the most repeated ones
    (the top √(distinct) n-grams that occur more than once)."""
    if len(text) < n:
        return 0.0
    if len(text) < 600:  # small paragraphs: a Counter beats numpy's per-call overhead
        counts = np.fromiter(Counter(text[i : i + n] for i in range(len(text) - n + 1)).values(), dtype=np.int64)
    else:
        _, counts = np.unique(_window_hashes(_codepoints(text), n), return_counts=True)
    return _obelics_char_ratio(counts)


def word_ngram_repetition(ws: list[str], n: int = 5) -> float:
    """OBELICS word repetition: share of word n-grams that occur more than once."""
    if len(ws) < n:
        return 0.0
    if len(ws) < 100:
        counts = np.fromiter(Counter(tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)).values(), dtype=np.int64)
    else:
        _, counts = np.unique(_window_hashes(_word_ids(ws), n), return_counts=True)
    total = counts.sum()
    return float(counts[counts > 1].sum() / total) if total else 0.0


def _ngram_char_lengths(ws: list[str], n: int) -> np.ndarray:
    """Characters in each word n-gram joined by single spaces, shape (len(ws)-n+1,)."""
    cum = np.concatenate(([0], np.cumsum([len(w) for w in ws])))
    return cum[n:] - cum[:-n] + (n - 1)


def top_ngram_char_frac(ws: list[str], n: int, text_len: int) -> float:
    """Gopher: characters covered by the most frequent repeated word n-gram, over the text length.

    An n-gram seen once is not a repetition; datatrove counts it anyway, which fails short
    documents whose every bigram is unique, so we require a count above one.
    """
    if len(ws) < n or text_len <= 0:
        return 0.0
    hashes = _window_hashes(_word_ids(ws), n)
    uniq, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    best = int(counts.argmax())
    if counts[best] < 2:
        return 0.0
    first = int(np.flatnonzero(inverse == best)[0])
    length = int(_ngram_char_lengths(ws, n)[first])
    return min(1.0, length * int(counts[best]) / text_len)


def dup_ngram_char_frac(ws: list[str], n: int, text_len: int) -> float:
    """Gopher: characters in repeated word n-grams over the text length. Scanning left to right, a
    window already seen counts its characters and the scan jumps past it, so overlapping repeats
    are not counted twice (datatrove's ``find_all_duplicate``)."""
    if len(ws) < n or text_len <= 0:
        return 0.0
    hashes = _window_hashes(_word_ids(ws), n)
    if np.unique(hashes).size == hashes.size:  # the usual case: nothing repeats
        return 0.0
    lengths = _ngram_char_lengths(ws, n).tolist()
    hs = hashes.tolist()
    seen: set[int] = set()
    repeated, i, m = 0, 0, len(hs)
    while i < m:
        if hs[i] in seen:
            repeated += lengths[i]
            i += n
        else:
            seen.add(hs[i])
            i += 1
    return min(1.0, repeated / text_len)


def duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items equal to an earlier one, their total characters)."""
    seen: set[str] = set()
    count = chars = 0
    for it in items:
        if it in seen:
            count += 1
            chars += len(it)
        else:
            seen.add(it)
    return count, chars


_PARA_SPLIT = re.compile(r"\n{2,}")
_LINE_SPLIT = re.compile(r"\n+")


def split_paragraphs(text: str) -> list[str]:
    s = text.strip()
    return _PARA_SPLIT.split(s) if s else []


def split_lines(text: str) -> list[str]:
    s = text.strip()
    return _LINE_SPLIT.split(s) if s else []


def dup_frac(items: list[str]) -> float:
    """Share of items (lines or paragraphs) that repeat an earlier one."""
    return duplicates(items)[0] / len(items) if items else 0.0


def dup_char_frac(items: list[str], text_len: int) -> float:
    """Characters in items repeating an earlier one, over the text length."""
    return min(1.0, duplicates(items)[1] / text_len) if text_len > 0 else 0.0


def url_host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return ""


def url_domain_blocked(url: str, domains: frozenset[str]) -> str | None:
    """The blocklisted domain that ``url``'s host equals or is a subdomain of, else None."""
    host = url_host(url)
    parts = host.split(".")
    for i in range(len(parts)):
        cand = ".".join(parts[i:])
        if cand in domains:
            return cand
    return None


def url_substring_blocked(url: str, substrings: Iterable[str]) -> str | None:
    """The first blocklisted substring found in the lower-cased URL, else None."""
    low = url.lower()
    for s in substrings:
        if s and s in low:
            return s
    return None


# ---------------------------------------------------------------------------------------------
# Checks


class TextStats:
    """Lazily computed tokenizations of one text, shared by all checks on it."""

    def __init__(self, text: str) -> None:
        self.text = text

    @functools.cached_property
    def words(self) -> list[str]:
        return words(self.text)

    @functools.cached_property
    def n_words(self) -> int:
        return len(self.words)

    @functools.cached_property
    def paragraphs(self) -> list[str]:
        return split_paragraphs(self.text)

    @functools.cached_property
    def lines(self) -> list[str]:
        return split_lines(self.text)


@dataclass(frozen=True)
class Check:
    """``name`` (the config key, also the reject reason) keeps texts whose ``measure`` is at least
    (``bound == "min"``) or at most (``"max"``) ``threshold``."""

    name: str
    bound: str
    threshold: float
    measure: Callable[[TextStats], float]

    def passes(self, value: float) -> bool:
        return value >= self.threshold if self.bound == "min" else value <= self.threshold


def _fmt(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:.4g}"


def detail(check: Check, value: float, node: int | None = None) -> str:
    """Measured value, the threshold it failed and where: ``0.4213 (max 0.3, node 3)``."""
    where = f", node {node}" if node is not None else ""
    return f"{_fmt(value)} ({check.bound} {_fmt(check.threshold)}{where})"


def _flagged(tf: TextFilterConfig) -> frozenset[str]:
    return load_word_list(tf.flagged_words_file or FLAGGED_WORDS_FILE)


def _stopwords() -> frozenset[str]:
    return load_word_list(STOPWORDS_FILE)


def node_checks(tf: TextFilterConfig) -> list[Check]:
    """Paragraph (text node) checks, cheapest first (OBELICS node-level defaults)."""
    stop, flagged = _stopwords(), _flagged(tf)
    spec: list[tuple[str, str, Callable[[TextStats], float]]] = [
        ("node_min_words", "min", lambda s: s.n_words),
        ("node_max_words", "max", lambda s: s.n_words),
        ("node_max_special_char_ratio", "max", lambda s: special_char_ratio(s.text)),
        ("node_min_stopword_ratio", "min", lambda s: word_ratio(s.words, stop)),
        ("node_max_flagged_word_ratio", "max", lambda s: word_ratio(s.words, flagged)),
        ("node_max_char_10gram_repetition", "max", lambda s: char_ngram_repetition(s.text, 10)),
        ("node_max_word_5gram_repetition", "max", lambda s: word_ngram_repetition(s.words, 5)),
    ]
    return [Check(k, b, getattr(tf, k), m) for k, b, m in spec if getattr(tf, k) is not None]


def doc_checks(tf: TextFilterConfig) -> list[Check]:
    """Document checks on the text left after paragraph filtering, cheapest first (OBELICS
    document-level and Gopher quality/repetition defaults)."""
    stop, flagged = _stopwords(), _flagged(tf)
    spec: list[tuple[str, str, Callable[[TextStats], float]]] = [
        ("doc_min_words", "min", lambda s: s.n_words),
        ("doc_max_words", "max", lambda s: s.n_words),
        ("doc_max_special_char_ratio", "max", lambda s: special_char_ratio(s.text)),
        ("doc_min_stopword_ratio", "min", lambda s: word_ratio(s.words, stop)),
        ("doc_max_flagged_word_ratio", "max", lambda s: word_ratio(s.words, flagged)),
        ("gopher_min_stop_words", "min", lambda s: gopher_stop_word_count(s.words)),
        ("gopher_min_mean_word_length", "min", lambda s: mean_word_length(s.words)),
        ("gopher_max_mean_word_length", "max", lambda s: mean_word_length(s.words)),
        ("gopher_max_symbol_word_ratio", "max", lambda s: symbol_word_ratio(s.text, s.n_words)),
        ("gopher_max_bullet_lines_ratio", "max", lambda s: bullet_lines_ratio(s.text)),
        ("gopher_max_ellipsis_lines_ratio", "max", lambda s: ellipsis_lines_ratio(s.text)),
        ("gopher_min_alpha_words_ratio", "min", lambda s: alpha_words_ratio(s.text)),
        ("gopher_max_dup_para_frac", "max", lambda s: dup_frac(s.paragraphs)),
        ("gopher_max_dup_para_char_frac", "max", lambda s: dup_char_frac(s.paragraphs, len(s.text))),
        ("gopher_max_dup_line_frac", "max", lambda s: dup_frac(s.lines)),
        ("gopher_max_dup_line_char_frac", "max", lambda s: dup_char_frac(s.lines, len(s.text))),
        ("doc_max_word_repetition", "max", lambda s: word_ngram_repetition(s.words, 5)),
        ("doc_max_char_repetition", "max", lambda s: char_ngram_repetition(s.text, 10)),
    ]
    checks = [Check(k, b, getattr(tf, k), m) for k, b, m in spec if getattr(tf, k) is not None]
    for n, frac in sorted((tf.gopher_top_ngram_char_frac or {}).items()):
        checks.append(
            Check(f"gopher_top_{n}gram_char_frac", "max", frac, lambda s, n=n: top_ngram_char_frac(s.words, n, len(s.text)))
        )
    for n, frac in sorted((tf.gopher_dup_ngram_char_frac or {}).items()):
        checks.append(
            Check(f"gopher_dup_{n}gram_char_frac", "max", frac, lambda s, n=n: dup_ngram_char_frac(s.words, n, len(s.text)))
        )
    return checks


def url_block_reason(url: str, tf: TextFilterConfig) -> tuple[str, str] | None:
    """(reason, matched entry) when the URL is on a configured blocklist."""
    if tf.url_domain_blocklist_file:
        hit = url_domain_blocked(url, load_word_list(tf.url_domain_blocklist_file))
        if hit:
            return "url_domain_blocklist", hit
    if tf.url_substring_blocklist_file:
        hit = url_substring_blocked(url, sorted(load_word_list(tf.url_substring_blocklist_file)))
        if hit:
            return "url_substring_blocklist", hit
    return None


def language_reason(lang: str, score: float, lc: LanguageConfig) -> str | None:
    """``language`` when the detected language is not kept, ``language_score`` when too unsure."""
    if lc.keep is not None and lang not in lc.keep:
        return "language"
    if lc.min_score is not None and score < lc.min_score:
        return "language_score"
    return None


# ---------------------------------------------------------------------------------------------
# The chain on one document


def filter_document(doc: Document, cfg: Config) -> tuple[Document | None, list[Reject]]:
    """Apply URL blocklists, language ID, paragraph and document filters to one document.

    Returns (the kept document with failing text nodes removed and ``language``/``language_score``
    set, or None when the document is dropped; one Reject per removed node and for the dropped
    document). The input is not modified. Image nodes are untouched; the image-count rule is
    ``image_count_reason``, applied once images are resolved.
    """
    tf, rejects = cfg.text_filters, []

    def reject(reason: str, det: str) -> Reject:
        return Reject.of(STAGE, reason, doc.provenance, doc.url, det)

    blocked = url_block_reason(doc.url, tf)
    if blocked:
        return None, [reject(blocked[0], blocked[1])]

    lang, score = langid.detect([t for t in doc.texts if t], cfg.language.detector)
    reason = language_reason(lang, score, cfg.language)
    if reason:
        return None, [reject(reason, f"{lang or 'none'} {score:.3f}")]

    nodes = []
    checks = node_checks(tf)
    for i, node in enumerate(doc.nodes):
        if isinstance(node, TextNode):
            failed = _first_failure(checks, TextStats(node.text))
            if failed:
                rejects.append(reject(failed[0].name, detail(failed[0], failed[1], i)))
                continue
        nodes.append(node)

    kept = dataclasses.replace(doc, nodes=nodes, language=lang, language_score=round(score, 4))
    failed = _first_failure(doc_checks(tf), TextStats(kept.text))
    if failed:
        rejects.append(reject(failed[0].name, detail(failed[0], failed[1])))
        return None, rejects
    return kept, rejects


def _first_failure(checks: list[Check], stats: TextStats) -> tuple[Check, float] | None:
    for c in checks:
        v = c.measure(stats)
        if not c.passes(v):
            return c, v
    return None


def image_count_reason(doc: Document, cfg: Config) -> str | None:
    """``doc_min_images`` / ``doc_max_images`` when the document's image count is out of range
    (OBELICS keeps 1–30); call once images are resolved and filtered."""
    tf, n = cfg.text_filters, len(doc.images)
    if tf.doc_min_images is not None and n < tf.doc_min_images:
        return "doc_min_images"
    if tf.doc_max_images is not None and n > tf.doc_max_images:
        return "doc_max_images"
    return None


# ---------------------------------------------------------------------------------------------
# Beam


def keep_sampled(key: str, rate: float) -> bool:
    """Deterministic sampling: the same key is always kept or always dropped at a given rate."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    h = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
    return h < rate * 2**64


class _FilterTextFn(beam.DoFn):
    """Document -> kept Document (main) and Reject (tag ``rejects``)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        langid.load(self.cfg.language.detector)
        self._kept = Metrics.counter("m3w", f"{STAGE}.kept")
        self._counters: dict[str, beam.metrics.metricbase.Counter] = {}
        tf = self.cfg.text_filters
        names = [c.name for c in node_checks(tf)]
        for n in names:
            self._counter(f"nodes_dropped_{n}")
        for n in [c.name for c in doc_checks(tf)] + ["language", "language_score", "url_domain_blocklist", "url_substring_blocklist"]:
            self._counter(f"dropped_{n}")

    def _counter(self, name: str):
        c = self._counters.get(name)
        if c is None:
            c = self._counters[name] = Metrics.counter("m3w", f"{STAGE}.{name}")
        return c

    def process(self, doc: Document) -> Iterator:
        kept, rejects = filter_document(doc, self.cfg)
        out = self.cfg.output
        n_node_rejects = len(rejects) - (kept is None)
        for i, r in enumerate(rejects):
            is_node = i < n_node_rejects
            self._counter(("nodes_dropped_" if is_node else "dropped_") + r.reason).inc()
            if not out.rejects:
                continue
            if is_node and not keep_sampled(f"{doc.doc_id}\0{r.detail}", out.rejects_sample_rate):
                continue
            yield beam.pvalue.TaggedOutput("rejects", r)
        if kept is not None:
            self._kept.inc()
            yield kept


class FilterText(beam.PTransform):
    """PCollection[Document] -> DoOutputsTuple: ``documents`` (kept, failing text nodes removed,
    language set) and ``rejects`` (Reject per dropped node — sampled at
    ``output.rejects_sample_rate`` — and per dropped document)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, docs):
        return docs | "FilterTextNodesAndDocs" >> beam.ParDo(_FilterTextFn(self.cfg)).with_outputs(
            "rejects", main="documents"
        )
