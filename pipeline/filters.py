"""Text quality filters: OBELICS paragraph/document rules, Gopher quality and repetition rules,
flagged words, URL blocklists and language identification.

Layout:
- pure measures on strings and word lists (unit-tested on hand-written text);
- ``Check``: one named threshold applied to one measure; its name is the config key and the
  reject reason, so a user who sees ``node_min_stopword_ratio`` in ``rejects/`` finds the knob;
- ``node_checks`` / ``doc_checks``: the configured chains, cheapest first;
- ``filter_document``: the whole chain on one ``Document`` (pure; no Beam); ``filter_documents``:
  the same on a list, paragraph checks measured for up to ``BATCH_DOCS`` documents at once;
- ``FilterText``: the Beam composite.

Order inside ``filter_document``: URL blocklists, then language ID on the unfiltered text (the
stop-word rules below are English lists, so running them first would empty a French page and hide
the real reason), then paragraph filters, then document filters on what is left.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import operator
import os
import re
import string
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from pipeline import langid
from pipeline.config import Config, LanguageConfig, TextFilterConfig
from pipeline.records import Reject, Rejects
from schemas.document import Document, TextNode

STAGE = "text_filter"
DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
STOPWORDS_FILE = os.path.join(DATA_DIR, "stopwords_en.txt")
FLAGGED_WORDS_FILE = os.path.join(DATA_DIR, "flagged_words_en.txt")

# ---------------------------------------------------------------------------------------------
# Tokens

# OBELICS/BLOOM count punctuation, digits, whitespace, common typographic symbols and emoji as
# "special characters"; the same set is stripped from both ends of each word.
_TYPOGRAPHIC = "“”‘’«»‹›„‚–—―‐‑‒…•·°±×÷§¶©®™†‡′″¦¬¯´¸¨¡¿€£¥¢¤½¼¾⁄→←↑↓↔⇒■□▪▫●○◆◇★☆✓✔✗✘"
_SPECIAL_CLASS = re.escape(string.punctuation + _TYPOGRAPHIC) + r"\d\s\u2600-\u27bf\ufe0f\U0001f000-\U0001faff"
_SPECIAL_RUN_RE = re.compile(f"[{_SPECIAL_CLASS}]+")
# A word: from the first to the last non-special character of a whitespace-separated token. Equal
# to split() then strip(specials) per token, but one C-level pass over the text.
_WORD_RE = re.compile(f"[^{_SPECIAL_CLASS}](?:\\S*[^{_SPECIAL_CLASS}])?")

# Gopher's stop-word rule: a real English text has at least two of these (MassiveText, datatrove).
GOPHER_STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])


def is_special(ch: str) -> bool:
    """Whether one character counts as special (punctuation, digit, whitespace, symbol, emoji)."""
    return _SPECIAL_RUN_RE.fullmatch(ch) is not None


def words(text: str) -> list[str]:
    """OBELICS words: whitespace-separated tokens, lower-cased, special characters stripped from
    both ends, empty ones dropped; "’" is folded to "'" so "don’t" is a stop word."""
    return _WORD_RE.findall(text.lower().replace("’", "'"))


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


def special_char_count(text: str) -> int:
    return sum(map(len, _SPECIAL_RUN_RE.findall(text)))


def special_char_ratio(text: str) -> float:
    """Share of characters that are punctuation, digits, whitespace, typographic symbols or emoji."""
    return special_char_count(text) / len(text) if text else 0.0


@functools.lru_cache(maxsize=1)
def _char_tables() -> tuple[np.ndarray, np.ndarray]:
    """(special, whitespace) flags for every BMP code point, from the same regexes as above."""
    chars = [chr(c) for c in range(0x10000)]
    special = np.fromiter((_SPECIAL_RUN_RE.fullmatch(c) is not None for c in chars), dtype=bool, count=0x10000)
    space = np.fromiter((c.isspace() for c in chars), dtype=bool, count=0x10000)
    return special, space


@functools.lru_cache(maxsize=1)
def _flag_table() -> np.ndarray:
    special, space = _char_tables()
    return special.astype(np.uint8) | (space.astype(np.uint8) << 1)


def _char_flags(cps: np.ndarray, bmp_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(special, whitespace) per code point; the rare astral ones are looked up one by one.
    ``bmp_only``: the caller knows every code point is below 0x10000."""
    special_t, space_t = _char_tables()
    if bmp_only:  # one lookup: bit 0 special, bit 1 whitespace (every whitespace is special)
        flags = _flag_table()[cps]
        return (flags & 1).view(bool), (flags >> 1).view(bool)
    bmp = np.minimum(cps, 0xFFFF)
    special, space = special_t[bmp], space_t[bmp]
    astral = np.flatnonzero(cps > 0xFFFF)
    for i in astral.tolist():
        c = chr(int(cps[i]))
        special[i] = _SPECIAL_RUN_RE.fullmatch(c) is not None
        space[i] = c.isspace()
    return special, space


def special_char_counts(texts: list[str]) -> list[int]:
    """``special_char_count`` of each text, in one vectorised pass over their code points."""
    lens = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    if not lens.sum():
        return [0] * len(texts)
    special, _ = _char_flags(np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32))
    owner = np.repeat(np.arange(len(texts)), lens)  # text index of each character
    return np.bincount(owner[special], minlength=len(texts)).tolist()


def word_ratio(ws: list[str], vocabulary: frozenset[str]) -> float:
    """Share of words found in ``vocabulary`` (stop-word ratio, flagged-word ratio)."""
    if not ws:
        return 0.0
    return sum(map(vocabulary.__contains__, ws)) / len(ws)


def gopher_stop_word_count(ws: list[str]) -> int:
    """How many words are among {the, be, to, of, and, that, have, with}."""
    return sum(map(GOPHER_STOP_WORDS.__contains__, ws))


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


def alpha_words_ratio(text: str, ws: list[str] | None = None) -> float:
    """Gopher: share of whitespace-separated tokens containing at least one letter. A token has
    a letter exactly when its word (``words``: the token minus special characters at its ends)
    has one, so the words are counted: most are all letters, the rest are searched."""
    n = len(text.split())
    if not n:
        return 0.0
    ws = words(text) if ws is None else ws
    flags = list(map(str.isalpha, ws))
    alpha = sum(flags)
    if alpha < len(ws):
        mixed = itertools.compress(ws, map(operator.not_, flags))
        alpha += sum(1 for w in mixed if any(map(str.isalpha, w)))
    return alpha / n


# N-gram statistics hash every window with a polynomial hash mod 2^64, computed for all windows at
# once from prefix sums: h(i, n) = (P[i+n] - P[i]) * B^-i. Exact for our purposes: a collision needs
# ~2^32 distinct windows, far beyond any document.
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible mod 2^64
_BASE_INV = np.uint64(pow(int(_BASE), -1, 2**64))
# Per base: (B^i, B^-i) for i < len; each entry is replaced as one tuple, so concurrent readers
# never see a mismatched pair.
_POWER_TABLES: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _powers(m: int, base: np.uint64 = _BASE) -> tuple[np.ndarray, np.ndarray]:
    pw, pinv = _POWER_TABLES.get(int(base), (np.ones(0, dtype=np.uint64),) * 2)
    if len(pw) < m:
        inv = np.uint64(pow(int(base), -1, 2**64))
        size = max(m, 2 * len(pw), 4096)
        with np.errstate(over="ignore"):
            pw = np.cumprod(np.full(size, base, dtype=np.uint64)) * inv
            pinv = np.cumprod(np.full(size, inv, dtype=np.uint64)) * base
        _POWER_TABLES[int(base)] = (pw, pinv)
    return pw[:m], pinv[:m]


def _window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Hash of every length-``n`` window of ``ids`` (uint64), shape (len(ids) - n + 1,)."""
    m = len(ids)
    pw, pinv = _powers(m + 1)
    with np.errstate(over="ignore"):
        prefix = np.empty(m + 1, dtype=np.uint64)
        prefix[0] = 0
        np.cumsum(ids * pw[:m], out=prefix[1:])
        return (prefix[n:] - prefix[: m - n + 1]) * pinv[: m - n + 1]


def _codepoints_u32(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64) + np.uint64(1)


def _word_ids(ws: list[str]) -> np.ndarray:
    # str hashes are cached on the objects; equal words hash equal within a process.
    return np.fromiter(map(hash, ws), dtype=np.int64, count=len(ws)).view(np.uint64) | np.uint64(1)


def _distinct_counts(hashes: np.ndarray, tags: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(group, count) per distinct (group, hash) pair, one sort; ``tags`` are group indices."""
    keys, counts, bits = _distinct_keys(hashes, tags, n_groups)
    return (keys & np.uint64((1 << bits) - 1)).astype(np.int64), counts


def _distinct_keys(hashes: np.ndarray, tags: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(sorted distinct keys ``hash << bits | group``, their counts, bits)."""
    bits = max(1, (n_groups - 1).bit_length())
    if not len(hashes):
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64), bits
    keys = (hashes << np.uint64(bits)) | tags.astype(np.uint64)
    keys.sort()
    first = np.empty(len(keys), dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    at = np.flatnonzero(first)
    return keys[at], np.diff(at, append=len(keys)), bits


def _grouped_ngram_counts(hashes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct n-grams per text: (text index, count) per distinct (text, n-gram), one sort."""
    if not hashes:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    tags = np.repeat(np.arange(len(hashes), dtype=np.uint64), [len(h) for h in hashes])
    return _distinct_counts(np.concatenate(hashes), tags, len(hashes))


def _top_sqrt_counts(tag: np.ndarray, counts: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group, occurrences of its top floor(sqrt(#distinct)) n-grams, never counting ones
    seen once (OBELICS/BLOOM character repetition)."""
    distinct = np.bincount(tag, minlength=n_groups)
    repeated_mask = counts > 1
    repeated = np.bincount(tag[repeated_mask], minlength=n_groups)
    k = np.minimum(np.sqrt(distinct).astype(np.int64), repeated)
    if not k.any():
        return np.zeros(n_groups)
    # Group ascending, count descending: one plain sort of (group, 2^32 - 1 - count) packed.
    packed = np.sort((tag[repeated_mask] << 32) | (0xFFFFFFFF - counts[repeated_mask]))
    rt, rc = packed >> 32, 0xFFFFFFFF - (packed & 0xFFFFFFFF)
    rank = np.arange(len(rt)) - np.searchsorted(rt, rt)
    sel = rank < k[rt]
    return np.bincount(rt[sel], weights=rc[sel], minlength=n_groups)


def char_ngram_repetitions(texts: list[str], n: int = 10) -> list[float]:
    """``char_ngram_repetition`` of each text, computed for all texts in one vectorised pass."""
    out = [0.0] * len(texts)
    idx = [i for i, t in enumerate(texts) if len(t) >= n]
    if not idx:
        return out
    cps = _codepoints("".join(texts[i] for i in idx))
    hashes, start = [], 0
    all_h = _window_hashes(cps, n)
    for i in idx:
        m = len(texts[i])
        hashes.append(all_h[start : start + m - n + 1])  # windows inside this text only
        start += m
    tag, counts = _grouped_ngram_counts(hashes)
    top = _top_sqrt_counts(tag, counts, len(idx))
    for j, i in enumerate(idx):
        out[i] = float(top[j] / (len(texts[i]) - n + 1))
    return out


def char_ngram_repetition(text: str, n: int = 10) -> float:
    """OBELICS character repetition: share of character n-grams taken by the most repeated ones
    (the top √(distinct) n-grams that occur more than once)."""
    return char_ngram_repetitions([text], n)[0]


def word_ngram_repetitions(word_lists: list[list[str]], n: int = 5) -> list[float]:
    """``word_ngram_repetition`` of each word list, in one vectorised pass."""
    out = [0.0] * len(word_lists)
    idx = [i for i, ws in enumerate(word_lists) if len(ws) >= n]
    if not idx:
        return out
    all_h = _window_hashes(_word_ids([w for i in idx for w in word_lists[i]]), n)
    hashes, start = [], 0
    for i in idx:
        m = len(word_lists[i])
        hashes.append(all_h[start : start + m - n + 1])  # windows inside this list only
        start += m
    tag, counts = _grouped_ngram_counts(hashes)
    rep = counts > 1
    repeated = np.bincount(tag[rep], weights=counts[rep], minlength=len(idx))
    for j, i in enumerate(idx):
        out[i] = float(repeated[j] / (len(word_lists[i]) - n + 1))
    return out


def word_ngram_repetition(ws: list[str], n: int = 5) -> float:
    """OBELICS word repetition: share of word n-grams that occur more than once."""
    return word_ngram_repetitions([ws], n)[0]


def _ngram_char_lengths(wlens: np.ndarray, n: int) -> np.ndarray:
    """Characters in each word n-gram joined by single spaces, shape (len(wlens)-n+1,)."""
    cum = np.zeros(len(wlens) + 1, dtype=np.int64)
    np.cumsum(wlens, out=cum[1:])
    return cum[n:] - cum[:-n] + (n - 1)


def _word_lengths(ws: list[str]) -> np.ndarray:
    return np.fromiter(map(len, ws), dtype=np.int64, count=len(ws))


def top_ngram_char_frac(ws: list[str], n: int, text_len: int, _ids: np.ndarray | None = None) -> float:
    """Gopher: characters covered by the most frequent repeated word n-gram, over the text length.

    Ties go to the n-gram seen first. An n-gram seen once is not a repetition; datatrove counts
    it anyway, which fails short documents whose every bigram is unique, so we require a count
    above one.
    """
    if len(ws) < n or text_len <= 0:
        return 0.0
    return _top_ngram_frac(_word_ids(ws) if _ids is None else _ids, _word_lengths(ws), n, text_len)


def _top_ngram_frac(ids: np.ndarray, wlens: np.ndarray, n: int, text_len: int) -> float:
    """``top_ngram_char_frac`` from word ids and word lengths."""
    if len(ids) < n or text_len <= 0:
        return 0.0
    hashes = _window_hashes(ids, n)
    srt = np.sort(hashes)
    first = np.empty(len(srt), dtype=bool)
    first[0] = True
    np.not_equal(srt[1:], srt[:-1], out=first[1:])
    at = np.flatnonzero(first)
    counts = np.diff(at, append=len(srt))
    top = counts.max()
    if top < 2:
        return 0.0
    best = srt[at[counts == top]]
    pos = int(np.flatnonzero(hashes == best[0] if len(best) == 1 else np.isin(hashes, best))[0])
    length = int(wlens[pos : pos + n].sum()) + n - 1
    return min(1.0, length * int(top) / text_len)


def dup_ngram_char_frac(ws: list[str], n: int, text_len: int, _ids: np.ndarray | None = None) -> float:
    """Gopher: characters in repeated word n-grams over the text length. Scanning left to right, a
    window already seen counts its characters and the scan jumps past it, so overlapping repeats
    are not counted twice (datatrove's ``find_all_duplicate``)."""
    if len(ws) < n or text_len <= 0:
        return 0.0
    return _dup_ngram_frac(_word_ids(ws) if _ids is None else _ids, _word_lengths(ws), n, text_len)


def _dup_ngram_frac(ids: np.ndarray, wlens: np.ndarray, n: int, text_len: int) -> float:
    """``dup_ngram_char_frac`` from word ids and word lengths."""
    if len(ids) < n or text_len <= 0:
        return 0.0
    hashes = _window_hashes(ids, n)
    uniq, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    repeated_at = np.flatnonzero(counts[inverse] > 1)
    if repeated_at.size == 0:  # the usual case: nothing repeats
        return 0.0
    # Windows seen once never match later ones, so only windows of repeated n-grams need the
    # sequential scan; the jumps are replayed over their positions.
    lengths = _ngram_char_lengths(wlens, n)
    seen: set[int] = set()
    repeated, nxt = 0, 0
    for pos, h in zip(repeated_at.tolist(), hashes[repeated_at].tolist()):
        if pos < nxt:
            continue
        if h in seen:
            repeated += int(lengths[pos])
            nxt = pos + n
        else:
            seen.add(h)
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


# "\n\n+" rather than "\n{2,}": same matches, but a literal prefix lets the regex engine skip ahead.
_PARA_SPLIT = re.compile(r"\n\n+")


def split_paragraphs(text: str) -> list[str]:
    s = text.strip()
    return _PARA_SPLIT.split(s) if s else []


def split_lines(text: str) -> list[str]:
    s = text.strip()
    # Pieces between runs of newlines; the stripped text has none at either end.
    return [ln for ln in s.split("\n") if ln]


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
# Fast path: every measure of one document from arrays built once per document.
#
# ``filter_document`` runs on millions of documents, so it does not tokenize text node by text
# node in Python. ``DocArrays`` turns the document's text nodes, joined by blank lines, into code
# points once; words are found from per-character flags (whitespace, special), each word gets a
# 64-bit id hashed from its lower-cased characters, and every node and document measure is a few
# numpy operations over those arrays. Values equal the definitions above (the ``TextStats``
# measures ``explain`` prints): tests/pipeline/test_filters_fast.py compares them on real pages
# and on arbitrary Unicode.

_CHAR_BASE = np.uint64(0xC2B2AE3D27D4EB4F)  # odd; a different base from the n-gram hash


@functools.lru_cache(maxsize=1)
def _lower_table() -> np.ndarray:
    """For every BMP code point, 1 + its lower-case code point with "’" read as "'" (as ``words``
    does), or 0 where ``str.lower`` is not one character in isolation ("İ" becomes two; "Σ"
    depends on its neighbours) or would change whether the character is special or whitespace.
    Documents with such characters are lower-cased by ``str.lower`` instead."""
    special, space = _char_tables()
    out = np.zeros(0x10000, dtype=np.uint64)
    for c in range(0x10000):
        low = chr(c).lower()
        if len(low) == 1 and c != 0x3A3:
            lc = ord(low)
            if lc < 0x10000 and special[lc] == special[c] and space[lc] == space[c]:
                out[c] = lc + 1
    out[ord("’")] = ord("'") + 1
    return out


@functools.lru_cache(maxsize=1)
def _alpha_table() -> np.ndarray:
    return np.fromiter((chr(c).isalpha() for c in range(0x10000)), dtype=bool, count=0x10000)


def _alpha_flags(cps: np.ndarray) -> np.ndarray:
    flags = _alpha_table()[np.minimum(cps, 0xFFFF)]
    for i in np.flatnonzero(cps > 0xFFFF).tolist():
        flags[i] = chr(int(cps[i])).isalpha()
    return flags


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: word ids look random to the n-gram hash built over them, which
    shares no structure with the character hash that made them."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _string_word_id(word: str) -> int:
    """The id ``DocArrays`` gives ``word``: sum of (code point + 1) * B^i mod 2^64, before mixing."""
    h, p, b = 0, 1, int(_CHAR_BASE)
    for c in word:
        h = (h + (ord(c) + 1) * p) % 2**64
        p = p * b % 2**64
    return h


@functools.lru_cache(maxsize=16)
def _vocabulary_table(vocabulary: frozenset[str]) -> tuple[np.ndarray, np.uint64, np.uint64]:
    """A collision-free hash table of a word list's ids: (slots, multiplier, shift). A word id
    ``x`` is in the list exactly when ``slots[(x * multiplier) >> shift] == x``: one gather per
    word instead of a binary search. Empty slots hold 0, which no word id equals in practice
    (a mixed 64-bit hash)."""
    ids = np.unique(_mix64(np.array([_string_word_id(w) for w in vocabulary], dtype=np.uint64)))
    bits = max(8, (4 * len(ids)).bit_length() + 4)
    rng = np.random.default_rng(0)
    while True:
        mult = np.uint64(int(rng.integers(1, 2**63)) * 2 + 1)
        slot = (ids * mult) >> np.uint64(64 - bits)
        if len(np.unique(slot)) == len(ids):
            break
        bits += 1
    slots = np.zeros(1 << bits, dtype=np.uint64)
    slots[slot.astype(np.int64)] = ids
    return slots, mult, np.uint64(64 - bits)


def _in_vocabulary(ids: np.ndarray, vocabulary: frozenset[str]) -> np.ndarray:
    slots, mult, shift = _vocabulary_table(vocabulary)
    return slots[((ids * mult) >> shift).astype(np.intp)] == ids


def _range_index(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group, position) for every position in the ranges [lo[g], hi[g]), ranges in order."""
    n = hi - lo
    group = np.repeat(np.arange(len(lo)), n)
    pos = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n - lo, n)
    return group, pos


class DocArrays:
    """One document's text nodes as arrays shared by every measure.

    ``texts`` are the text nodes in order. Coordinates: the nodes joined by blank lines
    (``joined``), node ``i`` starting at ``starts[i]``; words come from the lower-cased join
    (identical unless lower-casing changes a length), with ``word_start``/``word_end`` there,
    ``word_node`` (node index), ``word_len`` and ``word_id``. Lazy parts (vocabulary flags, n-gram
    hashes) are computed on first use, so a document dropped early pays only for what ran.
    """

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        k = self.n_nodes = len(texts)
        self.lens = np.fromiter(map(len, texts), dtype=np.int64, count=k)
        self.starts = np.cumsum(self.lens + 2) - (self.lens + 2)
        self.joined = "\n\n".join(texts)
        self.cps = np.frombuffer(self.joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        bmp = not len(self.cps) or int(self.cps.max()) < 0x10000
        self.special, self.space = _char_flags(self.cps, bmp)

        low1 = None  # lower-cased code points + 1, as uint64 (the word hash's input)
        if len(self.cps) and bmp:
            low1 = _lower_table()[self.cps]
            if int(low1.min()) == 0:
                low1 = None
        if low1 is not None or not len(self.cps):
            self.low1 = np.ones(0, dtype=np.uint64) if low1 is None else low1
            low_special, low_space, low_starts = self.special, self.space, self.starts
        else:  # rare: characters whose lower case is not one simple character
            lowered = [t.lower().replace("’", "'") for t in texts]
            llens = np.fromiter(map(len, lowered), dtype=np.int64, count=k)
            low_starts = np.cumsum(llens + 2) - (llens + 2)
            low = np.frombuffer("\n\n".join(lowered).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            low_special, low_space = _char_flags(low)
            self.low1 = low.astype(np.uint64) + np.uint64(1)

        # A word runs from the first to the last non-special character of a whitespace token:
        # consecutive non-special characters belong to one word unless whitespace lies between.
        plain = np.flatnonzero(~low_special)
        if len(plain):
            token = np.cumsum(low_space, dtype=np.int32)[plain]
            brk = np.flatnonzero(token[1:] != token[:-1])
            ws = plain[np.concatenate(([0], brk + 1))]
            we = plain[np.append(brk, len(plain) - 1)] + 1
            m = len(self.low1)
            pw, pinv = _powers(m + 1, _CHAR_BASE)
            prefix = np.zeros(m + 1, dtype=np.uint64)
            np.cumsum(self.low1 * pw[:m], out=prefix[1:])
            self.word_id = _mix64((prefix[we] - prefix[ws]) * pinv[ws])
        else:
            ws = we = np.zeros(0, dtype=np.int64)
            self.word_id = np.zeros(0, dtype=np.uint64)
        self.word_start, self.word_end = ws, we
        self.low_starts = low_starts
        self.word_node = np.searchsorted(low_starts, ws, side="right") - 1
        self.word_len = we - ws
        self.node_words = np.bincount(self.word_node, minlength=k)
        self._cache: dict = {}
        # Batches (``filter_documents``): the document index of every node, nondecreasing;
        # None when the nodes are one document's.
        self.doc_of_node: np.ndarray | None = None
        self.n_docs = 1

    # -- per node ------------------------------------------------------------------------------

    def _get(self, key, make):
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = make()
        return v

    def node_special(self) -> np.ndarray:
        """Special characters per node (original text)."""

        def make():
            if not self.n_nodes:
                return np.zeros(0, dtype=np.int64)
            # Sums from each node's start to the next one's, less the two separator newlines;
            # a trailing False gives the last (possibly empty) node a valid start.
            sums = np.add.reduceat(np.append(self.special, False), self.starts, dtype=np.int64)
            sums[:-1] -= 2
            return sums

        return self._get("special", make)

    def node_tokens(self) -> np.ndarray:
        """Whitespace tokens per node (``len(text.split())``): characters that are not whitespace
        and follow whitespace or the start; the blank-line separators start none."""

        def make():
            if not self.n_nodes:
                return np.zeros(0, dtype=np.int64)
            start = ~self.space
            start[1:] &= self.space[:-1]
            return np.add.reduceat(np.append(start, False), self.starts, dtype=np.int64)

        return self._get("node_tokens", make)

    def word_has_alpha(self) -> np.ndarray:
        """Whether each word has a letter. Nearly every word starts with one; the few others are
        searched character by character."""

        def make():
            has = _alpha_flags(self.low1[self.word_start] - np.uint64(1))
            rest = np.flatnonzero(~has)
            if len(rest) > 64:
                cum = np.zeros(len(self.low1) + 1, dtype=np.int64)
                np.cumsum(_alpha_flags(self.low1 - np.uint64(1)), out=cum[1:])
                return cum[self.word_end] > cum[self.word_start]
            for i in rest.tolist():
                has[i] = _alpha_flags(self.low1[self.word_start[i] : self.word_end[i]] - np.uint64(1)).any()
            return has

        return self._get("word_alpha", make)

    def word_flags(self, vocabulary: frozenset[str]) -> np.ndarray:
        return self._get(("vocab", id(vocabulary)), lambda: _in_vocabulary(self.word_id, vocabulary))

    def node_special_ratio(self, idx: np.ndarray) -> np.ndarray:
        return _ratio(self.node_special()[idx], self.lens[idx])

    def node_word_ratio(self, idx: np.ndarray, vocabulary: frozenset[str]) -> np.ndarray:
        hits = self._get(
            ("node_vocab", id(vocabulary)),
            lambda: np.bincount(self.word_node, weights=self.word_flags(vocabulary), minlength=self.n_nodes),
        )
        return _ratio(hits[idx], self.node_words[idx])

    def node_char_repetition(self, idx: np.ndarray, n: int) -> np.ndarray:
        """``char_ngram_repetition`` of the nodes ``idx``."""
        out = np.zeros(len(idx))
        ok = self.lens[idx] >= n
        sel = idx[ok]
        if not len(sel):
            return out
        hashes = self._get(("char_windows", n), lambda: _window_hashes(np.add(self.cps, 1, dtype=np.uint64), n))
        # Windows inside the selected nodes: runs of (n-gram windows of a node, the rest) along
        # the text, marked with np.repeat rather than gathered position by position.
        inner = self.lens[sel] - n + 1
        ends = np.append(self.starts[sel], len(hashes))
        run = np.empty(2 * len(sel) + 1, dtype=np.int64)
        run[0] = ends[0]
        run[1::2] = inner
        run[2::2] = ends[1:] - ends[:-1] - inner
        take = np.repeat(np.tile(np.array([False, True]), len(sel) + 1)[: len(run)], run)
        group = np.repeat(np.arange(len(sel)), inner)
        if self.doc_of_node is None:
            keys, counts, bits = _distinct_keys(hashes[take], group, len(sel))
            # reused by KeptText.char_repetition: keys hold the hash's low 64 - bits bits
            hmask = np.uint64(2**64 - 1) >> np.uint64(bits)
            self._cache[("char_keys", n)] = (sel, keys, counts, bits, hmask)
            tag = (keys & np.uint64((1 << bits) - 1)).astype(np.int64)
        else:
            tag, counts = self._batch_char_keys(sel, hashes[take], group, n)
        top = _top_sqrt_counts(tag, counts, len(sel))
        out[ok] = top / (self.lens[sel] - n + 1)
        return out

    def _batch_char_keys(self, sel: np.ndarray, hashes: np.ndarray, group: np.ndarray, n: int):
        """Distinct (node, n-gram) counts of a batch, sorted document-major: each key is
        ``doc | low hash bits | node index among the document's selected nodes``, so one sort
        leaves every document's keys contiguous and ordered by hash, the layout
        ``KeptText.char_repetition`` reuses (``doc_view`` cuts it per document).
        Returns (selected-node index, count) per distinct pair."""
        sel_doc = self.doc_of_node[sel]
        doc_first = np.searchsorted(sel_doc, np.arange(self.n_docs + 1))  # sel range of each doc
        local = np.arange(len(sel)) - doc_first[sel_doc]
        nbits = max(1, int(local.max()).bit_length())
        dbits = max(1, (self.n_docs - 1).bit_length())
        low = np.uint64((1 << nbits) - 1)
        keys = ((hashes << np.uint64(dbits + nbits)) >> np.uint64(dbits)) | (
            (sel_doc.astype(np.uint64) << np.uint64(64 - dbits)) | local.astype(np.uint64)
        )[group]
        keys.sort()
        first = np.empty(len(keys), dtype=bool)
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        at = np.flatnonzero(first)
        keys, counts = keys[at], np.diff(at, append=len(keys))
        key_doc = (keys >> np.uint64(64 - dbits)).astype(np.int64)
        tag = doc_first[key_doc] + (keys & low).astype(np.int64)
        bounds = np.searchsorted(key_doc, np.arange(self.n_docs + 1))
        self._cache[("batch_char_keys", n)] = (sel, doc_first, keys, counts, bounds, nbits, dbits)
        return tag, counts

    def node_word_repetition(self, idx: np.ndarray, n: int) -> np.ndarray:
        """``word_ngram_repetition`` of the nodes ``idx``."""
        out = np.zeros(len(idx))
        nw = self.node_words[idx]
        ok = nw >= n
        sel = idx[ok]
        if not len(sel):
            return out
        hashes = self._get(("word_windows", n), lambda: _window_hashes(self.word_id, n))
        first = np.searchsorted(self.word_node, sel)  # words of a node are consecutive
        group, pos = _range_index(first, first + self.node_words[sel] - n + 1)
        tag, counts = _distinct_counts(hashes[pos], group, len(sel))
        rep = counts > 1
        repeated = np.bincount(tag[rep], weights=counts[rep], minlength=len(sel))
        out[ok] = repeated / (self.node_words[sel] - n + 1)
        return out

    # -- batches -------------------------------------------------------------------------------

    @classmethod
    def batch(cls, docs_texts: list[list[str]]) -> "DocArrays":
        """The text nodes of several documents as one set of arrays (node measures do not depend
        on the other nodes); ``doc_view`` gives each document's own arrays."""
        a = cls([t for texts in docs_texts for t in texts])
        counts = np.fromiter(map(len, docs_texts), dtype=np.int64, count=len(docs_texts))
        a.doc_of_node = np.repeat(np.arange(len(docs_texts)), counts)
        a.n_docs = len(docs_texts)
        a.doc_nodes = np.concatenate(([0], np.cumsum(counts)))
        return a

    def doc_view(self, d: int) -> "DocArrays":
        """Document ``d``'s arrays cut out of a batch: the same values ``DocArrays(texts)`` has
        (slices, coordinates shifted to the document), with the node results computed so far."""
        n0, n1 = int(self.doc_nodes[d]), int(self.doc_nodes[d + 1])
        v = object.__new__(DocArrays)
        v.texts = self.texts[n0:n1]
        v.n_nodes = n1 - n0
        v.doc_of_node, v.n_docs = None, 1
        v._cache = {}
        if n0 == n1:
            v.lens = v.starts = v.low_starts = np.zeros(0, dtype=np.int64)
            v.joined = ""
            v.cps = np.zeros(0, dtype=np.uint32)
            v.special = v.space = np.zeros(0, dtype=bool)
            v.low1 = np.ones(0, dtype=np.uint64)
            v.word_start = v.word_end = v.word_node = v.word_len = v.node_words = np.zeros(0, dtype=np.int64)
            v.word_id = np.zeros(0, dtype=np.uint64)
            return v
        c0 = int(self.starts[n0])
        c1 = int(self.starts[n1 - 1] + self.lens[n1 - 1])
        l0 = int(self.low_starts[n0])
        l1 = int(self.low_starts[n1]) - 2 if n1 < self.n_nodes else len(self.low1)
        w0, w1 = np.searchsorted(self.word_node, [n0, n1]).tolist()
        v.lens = self.lens[n0:n1]
        v.starts = self.starts[n0:n1] - c0
        v.low_starts = self.low_starts[n0:n1] - l0
        v.joined = self.joined[c0:c1]
        v.cps = self.cps[c0:c1]
        v.special, v.space = self.special[c0:c1], self.space[c0:c1]
        v.low1 = self.low1[l0:l1]
        v.word_start, v.word_end = self.word_start[w0:w1] - l0, self.word_end[w0:w1] - l0
        v.word_node = self.word_node[w0:w1] - n0
        v.word_len, v.word_id = self.word_len[w0:w1], self.word_id[w0:w1]
        v.node_words = self.node_words[n0:n1]
        # Needed by most documents' checks: computed once for the batch.
        v._cache["node_tokens"] = self.node_tokens()[n0:n1]
        v._cache["word_alpha"] = self.word_has_alpha()[w0:w1]
        for key, val in self._cache.items():
            if key == "special" or (isinstance(key, tuple) and key[0] == "node_vocab"):
                v._cache[key] = val[n0:n1]
            elif isinstance(key, tuple) and key[0] == "vocab":
                v._cache[key] = val[w0:w1]
            elif isinstance(key, tuple) and key[0] == "batch_char_keys":
                sel, doc_first, keys, counts, bounds, nbits, dbits = val
                b0, b1 = int(bounds[d]), int(bounds[d + 1])
                local = keys[b0:b1] & np.uint64(2 ** (64 - dbits) - 1)
                hmask = np.uint64(2 ** (64 - dbits - nbits) - 1)
                v._cache[("char_keys", key[1])] = (
                    sel[doc_first[d] : doc_first[d + 1]] - n0, local, counts[b0:b1], nbits, hmask
                )
        return v

    # -- the document left after node filtering ------------------------------------------------

    def keep(self, kept: np.ndarray, wanted_n: tuple[int, ...] = ()) -> "KeptText":
        return KeptText(self, kept, wanted_n)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (as each measure returns on empty input)."""
    out = np.zeros(len(num))
    np.divide(num, den, out=out, where=den > 0)
    return out


class KeptText:
    """Document-level measures of the kept text nodes joined by blank lines (the text
    ``TextStats.joined`` describes), from the document's ``DocArrays``."""

    def __init__(self, arrays: DocArrays, kept: np.ndarray, wanted_n: tuple[int, ...] = ()) -> None:
        """``wanted_n``: the word n-gram lengths the checks will ask for, counted together."""
        self.a = arrays
        self.kept = kept
        self.nodes = np.flatnonzero(kept)
        seps = 2 * max(len(self.nodes) - 1, 0)
        self.text_len = int(arrays.lens[self.nodes].sum()) + seps
        self._seps = seps
        wmask = kept[arrays.word_node]
        self.word_mask = wmask
        self.ids = arrays.word_id[wmask]
        self.word_len = arrays.word_len[wmask]
        self.n_words = len(self.ids)
        self._line_shares: tuple[float, float] | None = None
        self._counts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._wanted_n: tuple[int, ...] = wanted_n

    # One KeptText per document: cached_property's lock costs nothing here (TextStats, made per
    # paragraph, keeps plain lazy slots instead).
    @functools.cached_property
    def text(self) -> str:
        t = self.a.texts
        return self.a.joined if self.kept.all() else "\n\n".join(t[i] for i in self.nodes.tolist())

    @functools.cached_property
    def lines(self) -> list[str]:
        return split_lines(self.text)

    @functools.cached_property
    def paragraphs(self) -> list[str]:
        return split_paragraphs(self.text)

    def special_ratio(self) -> float:
        if not self.text_len:
            return 0.0
        return (int(self.a.node_special()[self.nodes].sum()) + self._seps) / self.text_len

    def word_ratio(self, vocabulary: frozenset[str]) -> float:
        return self.vocab_count(vocabulary) / self.n_words if self.n_words else 0.0

    def vocab_count(self, vocabulary: frozenset[str]) -> int:
        return int(self.a.word_flags(vocabulary)[self.word_mask].sum())

    def mean_word_length(self) -> float:
        return int(self.word_len.sum()) / self.n_words if self.n_words else 0.0

    def alpha_words_ratio(self) -> float:
        """Tokens with a letter over whitespace tokens: a token has a letter exactly when its
        word does (letters are never stripped)."""
        a = self.a
        tokens = int(a.node_tokens()[self.nodes].sum())  # tokens never span the separators
        if not tokens:
            return 0.0
        return int(a.word_has_alpha()[self.word_mask].sum()) / tokens

    def _ngram_counts(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hash, occurrences of its n-gram) of every word n-gram window, shape (n_words-n+1,)
        each. All the n the checks use are counted together, in one sort per row of a
        (n values x windows) array: one pass of numpy calls instead of one per n."""
        got = self._counts.get(n)
        if got is None:
            # Short n first: once some n-gram length has no repeat, no longer one repeats, and
            # on most documents that already holds at 5 words.
            wanted = sorted(set(self._wanted_n) | {n})
            self._count_ngrams([k for k in wanted if k <= 5 or k == n])
            free = [k for k, (_, c) in self._counts.items() if not (c > 1).any()]
            longer = [k for k in wanted if k not in self._counts]
            if free and longer:
                for k in [k for k in longer if min(free) < k <= self.n_words]:
                    w = self.n_words - k + 1
                    self._counts[k] = (np.zeros(w, dtype=np.uint64), np.ones(w, dtype=np.int64))  # hashes unused: nothing repeats
                longer = [k for k in longer if k not in self._counts]
            if longer:
                self._count_ngrams(longer)
            got = self._counts[n]
        return got

    def _count_ngrams(self, ns: list[int]) -> None:
        m = self.n_words
        ns = [n for n in ns if n <= m]  # callers ask only for n <= m
        if not ns:
            return
        pw, pinv = _powers(m + 1)
        prefix = np.zeros(m + 1 + max(ns), dtype=np.uint64)
        np.cumsum(self.ids * pw[:m], out=prefix[1 : m + 1])
        pos = np.arange(m)
        nn = np.array(ns)[:, None]
        valid = pos[None, :] <= m - nn  # window fits
        h = (prefix[pos[None, :] + nn] - prefix[pos[None, :]]) * pinv[:m][None, :]
        # Sort (hash, position) packed in one integer: the top bits keep the hash, the low bits
        # say where each window was (argsort costs twice a plain sort). Positions past the end
        # get distinct filler hashes that never repeat.
        bits = max(1, m.bit_length())
        h = np.where(valid, h, ~pos.astype(np.uint64))
        srt = np.sort((h >> np.uint64(bits) << np.uint64(bits)) | pos.astype(np.uint64), axis=1)
        where = (srt & np.uint64((1 << bits) - 1)).astype(np.int64)
        srt >>= np.uint64(bits)
        # Runs of equal hashes along the flattened rows (each row starts a run): every sorted
        # window gets its run's length, then goes back to its position.
        flat = srt.ravel()
        edge = np.empty(len(flat), dtype=bool)
        edge[0] = True
        np.not_equal(flat[1:], flat[:-1], out=edge[1:])
        edge[::m] = True
        run = np.diff(np.flatnonzero(edge), append=len(flat))
        counts = np.empty(len(flat), dtype=np.int64)
        counts[(where + (np.arange(len(ns)) * m)[:, None]).ravel()] = np.repeat(run, run)
        counts = counts.reshape(len(ns), m)
        for row, n in enumerate(ns):
            w = m - n + 1
            self._counts[n] = (h[row, :w], counts[row, :w])

    def word_repetition(self, n: int) -> float:
        """``word_ngram_repetition``: windows whose n-gram repeats, over all windows."""
        if self.n_words < n:
            return 0.0
        _, counts = self._ngram_counts(n)
        return int(np.count_nonzero(counts > 1)) / (self.n_words - n + 1)

    def top_ngram(self, n: int) -> float:
        """``top_ngram_char_frac``: the first window holding the most frequent n-gram."""
        if self.n_words < n or self.text_len <= 0:
            return 0.0
        _, counts = self._ngram_counts(n)
        top = int(counts.max())
        if top < 2:
            return 0.0
        at = int(np.argmax(counts == top))  # the first one seen
        length = int(self.word_len[at : at + n].sum()) + n - 1
        return min(1.0, length * top / self.text_len)

    def dup_ngram(self, n: int) -> float:
        """``dup_ngram_char_frac``: the left-to-right scan over windows whose n-gram repeats."""
        if self.n_words < n or self.text_len <= 0:
            return 0.0
        all_hashes, counts = self._ngram_counts(n)
        repeated_at = np.flatnonzero(counts > 1)
        if not len(repeated_at):
            return 0.0
        hashes = all_hashes[repeated_at]
        lengths = _ngram_char_lengths(self.word_len, n)
        seen: set[int] = set()
        repeated, nxt = 0, 0
        for pos, h in zip(repeated_at.tolist(), hashes.tolist()):
            if pos < nxt:
                continue
            if h in seen:
                repeated += int(lengths[pos])
                nxt = pos + n
            else:
                seen.add(h)
        return min(1.0, repeated / self.text_len)

    def char_repetition(self, n: int) -> float:
        """``char_ngram_repetition`` of the kept text. The node check already counted the n-grams
        inside every kept node; only windows reaching across a blank-line separator are new."""
        a, L = self.a, self.text_len
        got = a._cache.get(("char_keys", n))
        if got is None or L < n:
            return char_ngram_repetition(self.text, n)
        sel, keys, counts, bits, hmask = got
        low = np.uint64((1 << bits) - 1)
        inside = self.kept[sel[(keys & low).astype(np.int64)]]
        hashes, counts = keys[inside] >> np.uint64(bits), counts[inside]  # still sorted by hash
        # Window starts not inside one node: the last n-1 characters of each kept node and the
        # separator after it (all of a node shorter than n), where a whole window still fits.
        lens = a.lens[self.nodes]
        kstart = np.cumsum(lens + 2) - (lens + 2)
        lo = np.maximum(kstart, kstart + lens - (n - 1))
        hi = np.minimum(kstart + lens + 2, L - n + 1)
        _, cross = _range_index(lo, np.maximum(lo, hi))
        if len(cross):
            cps = a.cps if self.kept.all() else _codepoints_u32(self.text)
            win = cps[cross[:, None] + np.arange(n)].astype(np.uint64) + np.uint64(1)
            pw, _ = _powers(n)
            ch = (win * pw[None, :]).sum(axis=1, dtype=np.uint64) & hmask
            ch.sort()
            at = np.searchsorted(hashes, ch)
            hashes = np.insert(hashes, at, ch)
            counts = np.insert(counts, at, 1)
        if not len(hashes):
            return 0.0
        first = np.empty(len(hashes), dtype=bool)
        first[0] = True
        np.not_equal(hashes[1:], hashes[:-1], out=first[1:])
        totals = np.add.reduceat(counts, np.flatnonzero(first))
        k = min(int(np.sqrt(len(totals))), int(np.count_nonzero(totals > 1)))
        if k <= 0:
            return 0.0
        top = np.sort(totals[totals > 1])[::-1][:k].sum()
        return float(top / (L - n + 1))

    def line_shares(self) -> tuple[float, float]:
        """(``bullet_lines_ratio``, ``ellipsis_lines_ratio``) from one pass over the lines."""
        if self._line_shares is None:
            lines = [s for s in (ln.strip() for ln in self.text.splitlines()) if s]
            if not lines:
                self._line_shares = (0.0, 0.0)
            else:
                bullets = sum(1 for s in lines if s[0] in "•-*·‣◦▪")
                ellipses = sum(1 for s in lines if s.endswith(("...", "…")))
                self._line_shares = (bullets / len(lines), ellipses / len(lines))
        return self._line_shares


# ---------------------------------------------------------------------------------------------
# Checks


class TextStats:
    """Lazily computed tokenizations of one text, shared by all checks on it.

    Plain lazy attributes rather than ``functools.cached_property``, whose per-access lock costs
    more than most measures on short paragraphs.
    """

    __slots__ = ("text", "_words", "_n_words", "_word_ids", "_special_ratio", "_paragraphs", "_lines", "no_repeat_n")

    def __init__(self, text: str) -> None:
        self.text = text
        self._words: list[str] | None = None
        self._n_words: int | None = None
        self._word_ids: np.ndarray | None = None
        self._special_ratio: float | None = None
        self._paragraphs: list[str] | None = None
        self._lines: list[str] | None = None
        # Largest n known to have no repeated word n-gram: no longer n-gram can repeat either.
        self.no_repeat_n: int | None = None

    @property
    def words(self) -> list[str]:
        if self._words is None:
            self._words = words(self.text)
        return self._words

    @property
    def n_words(self) -> int:
        if self._n_words is None:
            self._n_words = len(self.words)
        return self._n_words

    @property
    def word_ids(self) -> np.ndarray:
        if self._word_ids is None:
            self._word_ids = _word_ids(self.words)
        return self._word_ids

    @property
    def special_ratio(self) -> float:
        if self._special_ratio is None:
            self._special_ratio = special_char_ratio(self.text)
        return self._special_ratio

    @property
    def paragraphs(self) -> list[str]:
        if self._paragraphs is None:
            self._paragraphs = split_paragraphs(self.text)
        return self._paragraphs

    @property
    def lines(self) -> list[str]:
        if self._lines is None:
            self._lines = split_lines(self.text)
        return self._lines

    @classmethod
    def joined(cls, parts: list["TextStats"], sep: str = "\n\n") -> "TextStats":
        """Stats of ``sep.join`` of the parts' texts, reusing their words and special-character
        counts (words never span a whitespace separator)."""
        out = cls(sep.join(p.text for p in parts))
        out._words = [w for p in parts for w in p.words]
        out._n_words = len(out._words)
        if out.text:
            specials = sum(p.special_ratio * len(p.text) for p in parts) + len(sep) * (len(parts) - 1)
            out._special_ratio = round(specials) / len(out.text)
        return out


def prefill_special(stats: list[TextStats]) -> None:
    """Special-character ratios of many texts in one pass (``special_char_counts``)."""
    todo = [s for s in stats if s._special_ratio is None]
    if not todo:
        return
    for s, c in zip(todo, special_char_counts([s.text for s in todo])):
        s._special_ratio = c / len(s.text) if s.text else 0.0


def _batched(get: Callable[[TextStats], float]) -> Callable[[list[TextStats]], list[float]]:
    def measure(stats: list[TextStats]) -> list[float]:
        prefill_special(stats)
        return [get(s) for s in stats]

    return measure


@dataclass(frozen=True)
class Check:
    """``name`` (the config key, also the reject reason) keeps texts whose ``measure`` is at least
    (``bound == "min"``) or at most (``"max"``) ``threshold``. ``batch``, when set, measures many
    texts in one vectorised pass and gives the same values as ``measure`` one by one."""

    name: str
    bound: str
    threshold: float
    measure: Callable[[TextStats], float]
    batch: Callable[[list[TextStats]], list[float]] | None = None
    # The same measure in ``filter_document``'s fast path: node checks take (DocArrays, node
    # indices) and return one value per node; document checks take a KeptText.
    fast: Callable | None = None

    def passes(self, value: float) -> bool:
        return value >= self.threshold if self.bound == "min" else value <= self.threshold

    def measure_many(self, stats: list[TextStats]) -> list[float]:
        return self.batch(stats) if self.batch is not None else [self.measure(s) for s in stats]


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
    spec: list[tuple[str, str, Callable[[TextStats], float], Callable | None, Callable]] = [
        ("node_min_words", "min", lambda s: s.n_words, None, lambda a, i: a.node_words[i]),
        ("node_max_words", "max", lambda s: s.n_words, None, lambda a, i: a.node_words[i]),
        (
            "node_max_special_char_ratio",
            "max",
            lambda s: s.special_ratio,
            _batched(lambda s: s.special_ratio),
            lambda a, i: a.node_special_ratio(i),
        ),
        ("node_min_stopword_ratio", "min", lambda s: word_ratio(s.words, stop), None, lambda a, i: a.node_word_ratio(i, stop)),
        (
            "node_max_flagged_word_ratio",
            "max",
            lambda s: word_ratio(s.words, flagged),
            None,
            lambda a, i: a.node_word_ratio(i, flagged),
        ),
        (
            "node_max_char_10gram_repetition",
            "max",
            lambda s: char_ngram_repetition(s.text, 10),
            lambda ss: char_ngram_repetitions([s.text for s in ss], 10),
            lambda a, i: a.node_char_repetition(i, 10),
        ),
        (
            "node_max_word_5gram_repetition",
            "max",
            lambda s: word_ngram_repetition(s.words, 5),
            lambda ss: word_ngram_repetitions([s.words for s in ss], 5),
            lambda a, i: a.node_word_repetition(i, 5),
        ),
    ]
    return [Check(k, b, getattr(tf, k), m, bt, f) for k, b, m, bt, f in spec if getattr(tf, k) is not None]


def doc_checks(tf: TextFilterConfig) -> list[Check]:
    """Document checks on the text left after paragraph filtering, cheapest first (OBELICS
    document-level and Gopher quality/repetition defaults)."""
    stop, flagged = _stopwords(), _flagged(tf)
    spec: list[tuple[str, str, Callable[[TextStats], float], Callable[[KeptText], float]]] = [
        ("doc_min_words", "min", lambda s: s.n_words, lambda k: k.n_words),
        ("doc_max_words", "max", lambda s: s.n_words, lambda k: k.n_words),
        ("doc_max_special_char_ratio", "max", lambda s: s.special_ratio, lambda k: k.special_ratio()),
        ("doc_min_stopword_ratio", "min", lambda s: word_ratio(s.words, stop), lambda k: k.word_ratio(stop)),
        ("doc_max_flagged_word_ratio", "max", lambda s: word_ratio(s.words, flagged), lambda k: k.word_ratio(flagged)),
        (
            "gopher_min_stop_words",
            "min",
            lambda s: gopher_stop_word_count(s.words),
            lambda k: k.vocab_count(GOPHER_STOP_WORDS),
        ),
        ("gopher_min_mean_word_length", "min", lambda s: mean_word_length(s.words), lambda k: k.mean_word_length()),
        ("gopher_max_mean_word_length", "max", lambda s: mean_word_length(s.words), lambda k: k.mean_word_length()),
        (
            "gopher_max_symbol_word_ratio",
            "max",
            lambda s: symbol_word_ratio(s.text, s.n_words),
            lambda k: symbol_word_ratio(k.text, k.n_words),
        ),
        ("gopher_max_bullet_lines_ratio", "max", lambda s: bullet_lines_ratio(s.text), lambda k: k.line_shares()[0]),
        (
            "gopher_max_ellipsis_lines_ratio",
            "max",
            lambda s: ellipsis_lines_ratio(s.text),
            lambda k: k.line_shares()[1],
        ),
        (
            "gopher_min_alpha_words_ratio",
            "min",
            lambda s: alpha_words_ratio(s.text, s.words),
            lambda k: k.alpha_words_ratio(),
        ),
        ("gopher_max_dup_para_frac", "max", lambda s: dup_frac(s.paragraphs), lambda k: dup_frac(k.paragraphs)),
        (
            "gopher_max_dup_para_char_frac",
            "max",
            lambda s: dup_char_frac(s.paragraphs, len(s.text)),
            lambda k: dup_char_frac(k.paragraphs, k.text_len),
        ),
        ("gopher_max_dup_line_frac", "max", lambda s: dup_frac(s.lines), lambda k: dup_frac(k.lines)),
        (
            "gopher_max_dup_line_char_frac",
            "max",
            lambda s: dup_char_frac(s.lines, len(s.text)),
            lambda k: dup_char_frac(k.lines, k.text_len),
        ),
        ("doc_max_word_repetition", "max", lambda s: word_ngram_repetition(s.words, 5), lambda k: k.word_repetition(5)),
        ("doc_max_char_repetition", "max", lambda s: char_ngram_repetition(s.text, 10), lambda k: k.char_repetition(10)),
    ]
    checks = [Check(k, b, getattr(tf, k), m, fast=f) for k, b, m, f in spec if getattr(tf, k) is not None]
    for n, frac in sorted((tf.gopher_top_ngram_char_frac or {}).items()):
        checks.append(
            Check(
                f"gopher_top_{n}gram_char_frac",
                "max",
                frac,
                lambda s, n=n: top_ngram_char_frac(s.words, n, len(s.text), s.word_ids),
                fast=lambda k, n=n: k.top_ngram(n),
            )
        )
    for n, frac in sorted((tf.gopher_dup_ngram_char_frac or {}).items()):
        checks.append(
            Check(
                f"gopher_dup_{n}gram_char_frac",
                "max",
                frac,
                lambda s, n=n: _dup_ngram_cached(s, n),
                fast=lambda k, n=n: k.dup_ngram(n),
            )
        )
    return checks


_CHECKS_CACHE: dict[tuple, tuple[list[Check], list[Check], dict[str, str]]] = {}
# (a copy of the configuration's fields, its checks): compared before building a cache key.
_LAST_CHECKS: tuple[dict, tuple[list[Check], list[Check], dict[str, str]]] | None = None


def _frozen(v: object) -> object:
    if isinstance(v, dict):
        return tuple(sorted(v.items()))
    return tuple(v) if isinstance(v, list) else v


def configured_checks(tf: TextFilterConfig) -> tuple[list[Check], list[Check]]:
    """(``node_checks(tf)``, ``doc_checks(tf)``), built once per distinct configuration: building
    them costs more than filtering a short document."""
    return _configured(tf)[:2]


def _configured(tf: TextFilterConfig) -> tuple[list[Check], list[Check], dict[str, str]]:
    """``configured_checks`` and, per node check, the end of its reject detail after the value
    (`` (max 0.3, node ``), formatted once rather than for every dropped node."""
    last = _LAST_CHECKS
    if last is not None and vars(tf) == last[0]:  # the usual case: one configuration throughout
        return last[1]
    key = tuple((k, _frozen(v)) for k, v in vars(tf).items())
    got = _CHECKS_CACHE.get(key)
    if got is None:
        if len(_CHECKS_CACHE) >= 64:
            _CHECKS_CACHE.clear()
        nodes = node_checks(tf)
        suffix = {c.name: f" ({c.bound} {_fmt(c.threshold)}, node " for c in nodes}
        got = _CHECKS_CACHE[key] = (nodes, doc_checks(tf), suffix)
    snapshot = {k: dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v for k, v in vars(tf).items()}
    globals()["_LAST_CHECKS"] = (snapshot, got)  # one tuple, replaced whole (safe under threads)
    return got


def _dup_ngram_cached(s: TextStats, n: int) -> float:
    if s.no_repeat_n is not None and n > s.no_repeat_n:
        return 0.0
    v = dup_ngram_char_frac(s.words, n, len(s.text), s.word_ids)
    if v == 0.0:
        s.no_repeat_n = n if s.no_repeat_n is None else min(s.no_repeat_n, n)
    return v


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


def first_failures(checks: list[Check], stats: list[TextStats]) -> list[tuple[Check, float] | None]:
    """For each text, its first failing check and measured value (None when all pass).

    Check-major: each check runs once over every text still standing (batched when it can be),
    which gives each text the same first failure as running its checks in order.
    """
    out: list[tuple[Check, float] | None] = [None] * len(stats)
    alive = list(range(len(stats)))
    for c in checks:
        if not alive:
            break
        values = c.measure_many([stats[i] for i in alive])
        still = []
        for i, v in zip(alive, values):
            if c.passes(v):
                still.append(i)
            else:
                out[i] = (c, v)
        alive = still
    return out


def node_failures(checks: list[Check], arrays: DocArrays) -> list[tuple[Check, float] | None]:
    """``first_failures`` of the document's text nodes, each check measuring every node still
    standing in one vectorised pass over ``arrays``."""
    out: list[tuple[Check, float] | None] = [None] * arrays.n_nodes
    alive = np.arange(arrays.n_nodes)
    for c in checks:
        if not len(alive):
            break
        if c.fast is not None:
            values = np.asarray(c.fast(arrays, alive))
        else:
            values = np.asarray([c.measure(TextStats(arrays.texts[i])) for i in alive.tolist()])
        ok = values >= c.threshold if c.bound == "min" else values <= c.threshold
        if not ok.all():
            bad = ~ok
            for i, v in zip(alive[bad].tolist(), values[bad].tolist()):
                out[i] = (c, v)
            alive = alive[ok]
    return out


def doc_failure(checks: list[Check], kept: KeptText) -> tuple[Check, float] | None:
    """The first document check the kept text fails, with its measured value."""
    stats: TextStats | None = None
    for c in checks:
        if c.fast is not None:
            v = c.fast(kept)
        else:
            stats = stats or TextStats(kept.text)
            v = c.measure(stats)
        if not c.passes(v):
            return c, v
    return None


# ---------------------------------------------------------------------------------------------
# The chain on one document


# Documents filtered together by ``filter_documents``: every node check is one numpy pass over
# all their nodes. Bounded so the batch keys of the character n-gram check keep at least 48 bits
# of hash (6 bits of document, 10 of node); a document with more text nodes is filtered alone.
BATCH_DOCS = 64
_BATCH_MAX_NODES = 1024


def filter_document(doc: Document, cfg: Config) -> tuple[Document | None, list[Reject]]:
    """Apply URL blocklists, language ID, paragraph and document filters to one document.

    Returns (the kept document with failing text nodes removed and ``language``/``language_score``
    set, or None when the document is dropped; one Reject per removed node and for the dropped
    document). The input is not modified. Image nodes are untouched; the image-count rule is
    ``image_count_reason``, applied once images are resolved.
    """
    return filter_documents([doc], cfg)[0]


def filter_documents(docs: list[Document], cfg: Config) -> list[tuple[Document | None, list[Reject]]]:
    """``filter_document`` of each document, in order, with the same results: the documents that
    pass URL and language checks have their text nodes measured together, up to ``BATCH_DOCS``
    at a time, so numpy's fixed cost per call is paid once per batch rather than per document."""
    out: list[tuple[Document | None, list[Reject]] | None] = [None] * len(docs)
    pending: list[tuple[int, list[int], str, float]] = []  # (index, text node positions, lang, score)
    for i, doc in enumerate(docs):
        screened = _screen(doc, cfg)
        if isinstance(screened, Reject):
            out[i] = (None, [screened])
        else:
            text_at = [j for j, n in enumerate(doc.nodes) if isinstance(n, TextNode)]
            pending.append((i, text_at, *screened))
    batch: list[tuple[int, list[int], str, float]] = []
    for item in pending:
        if len(item[1]) > _BATCH_MAX_NODES:
            _filter_batch(docs, [item], cfg, out)
            continue
        batch.append(item)
        if len(batch) >= BATCH_DOCS:
            _filter_batch(docs, batch, cfg, out)
            batch = []
    if batch:
        _filter_batch(docs, batch, cfg, out)
    return out  # type: ignore[return-value]


def _screen(doc: Document, cfg: Config) -> tuple[str, float] | Reject:
    """URL blocklists then language ID: the document's Reject, or its (language, score)."""
    tf = cfg.text_filters
    blocked = url_block_reason(doc.url, tf)
    if blocked:
        return Reject.of(STAGE, blocked[0], doc.provenance, doc.url, blocked[1])
    lang, score = langid.detect([t for t in doc.texts if t], cfg.language.detector)
    reason = language_reason(lang, score, cfg.language)
    if reason:
        return Reject.of(STAGE, reason, doc.provenance, doc.url, f"{lang or 'none'} {score:.3f}")
    return lang, score


def _filter_batch(docs: list[Document], batch: list[tuple[int, list[int], str, float]], cfg: Config, out: list) -> None:
    """Paragraph then document filters of the screened documents ``batch``, results into ``out``."""
    tf = cfg.text_filters
    node_cs, doc_cs, suffix = _configured(tf)
    texts = [[docs[i].nodes[j].text for j in text_at] for i, text_at, _, _ in batch]
    arrays = DocArrays(texts[0]) if len(batch) == 1 else DocArrays.batch(texts)
    all_failures = node_failures(node_cs, arrays)
    wanted_n = {*(tf.gopher_top_ngram_char_frac or {}), *(tf.gopher_dup_ngram_char_frac or {})}
    if tf.doc_max_word_repetition is not None:
        wanted_n.add(5)
    start = 0
    for d, (i, text_at, lang, score) in enumerate(batch):
        doc = docs[i]
        failures = all_failures[start : start + len(text_at)]
        start += len(text_at)
        rejects = []
        dropped = set()
        prov = doc.provenance
        where = (prov.warc_filename, prov.warc_record_offset) if prov is not None else ("", -1)
        for j, failed in zip(text_at, failures):
            if failed:
                dropped.add(j)
                name = failed[0].name  # detail(...) as below, with the threshold part formatted once
                det = f"{_fmt(failed[1])}{suffix[name]}{j})"
                rejects.append(Reject(STAGE, name, doc.url, where[0], where[1], det))
        nodes = [n for j, n in enumerate(doc.nodes) if j not in dropped] if dropped else list(doc.nodes)
        kept_mask = np.fromiter((f is None for f in failures), dtype=bool, count=len(failures))
        view = arrays if len(batch) == 1 else arrays.doc_view(d)
        failed = doc_failure(doc_cs, view.keep(kept_mask, tuple(wanted_n)))
        if failed:
            rejects.append(Reject.of(STAGE, failed[0].name, doc.provenance, doc.url, detail(failed[0], failed[1])))
            out[i] = (None, rejects)
        else:
            out[i] = (dataclasses.replace(doc, nodes=nodes, language=lang, language_score=round(score, 4)), rejects)


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


class _FilterTextFn(beam.DoFn):
    """Document -> kept Document (main) and a ``Rejects`` batch per flush and window (tag ``rejects``).

    Documents are buffered and filtered ``BATCH_DOCS`` at a time (``filter_documents``); each
    output keeps its input's window and timestamp, and outputs follow the input order within a
    bundle."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        langid.load(self.cfg.language.detector)
        _char_tables()  # 64k-entry character tables, built once per worker
        _flag_table()
        _lower_table()
        _alpha_table()
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

    def start_bundle(self) -> None:
        self._buffer: list[tuple[Document, object, object]] = []  # (document, window, timestamp)

    def process(self, doc: Document, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam) -> Iterator:
        self._buffer.append((doc, window, timestamp))
        if len(self._buffer) >= BATCH_DOCS:
            yield from self._flush()

    def finish_bundle(self) -> Iterator:
        yield from self._flush()

    def _flush(self) -> Iterator:
        buffered, self._buffer = self._buffer, []
        if not buffered:
            return
        results = filter_documents([d for d, _, _ in buffered], self.cfg)
        batch = Rejects()  # one element per window: node rejects are many
        batch_window = None
        for (doc, window, timestamp), (kept, rejects) in zip(buffered, results):
            n_node_rejects = len(rejects) - (kept is None)
            for i, r in enumerate(rejects):
                self._counter(("nodes_dropped_" if i < n_node_rejects else "dropped_") + r.reason).inc()
            if rejects and self.cfg.output.rejects:
                if batch and window != batch_window:
                    yield beam.pvalue.TaggedOutput("rejects", WindowedValue(batch, batch_ts, (batch_window,)))
                    batch = Rejects()
                if not batch:
                    batch_window, batch_ts = window, timestamp
                batch += rejects
            if kept is not None:
                self._kept.inc()
                yield WindowedValue(kept, timestamp, (window,))
        if batch:
            yield beam.pvalue.TaggedOutput("rejects", WindowedValue(batch, batch_ts, (batch_window,)))


class FilterText(beam.PTransform):
    """PCollection[Document] -> DoOutputsTuple: ``documents`` (kept, failing text nodes removed,
    language set) and ``rejects``: ``Rejects`` batches (every dropped node and document of a
    batch of documents in one window; ``RejectsToJson`` samples them)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, docs):
        return docs | "FilterTextNodesAndDocs" >> beam.ParDo(_FilterTextFn(self.cfg)).with_outputs(
            "rejects", main="documents"
        )
