"""Text quality filters: OBELICS paragraph/document rules, Gopher quality and repetition rules,
flagged words, URL blocklists and language identification.

Layout:
- pure measures on strings and word lists (unit-tested on hand-written text);
- ``Check``: one named threshold applied to one measure; its name is the config key and the
  reject reason, so a user who sees ``node_min_stopword_ratio`` in ``rejects/`` finds the knob;
- ``node_checks`` / ``doc_checks``: the configured chains, cheapest first;
- ``filter_document``: the whole chain on one ``Document`` (pure; no Beam), the checks run by
  their compiled form (``pipeline/_textchain.c``, same values);
- ``FilterText``: the Beam composite (pipeline.filters_stage).

Order inside ``filter_document``: URL blocklists, then language ID on the unfiltered text (the
stop-word rules below are English lists, so running them first would empty a French page and hide
the real reason), then paragraph language ID where configured, then paragraph filters, then
document filters on what is left.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import operator
import os
import re
import string
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit

import numpy as np

from pipeline import langid
from pipeline.config import Config, LanguageConfig, TextFilterConfig
from pipeline.records import Reject, Rejects
from schemas.document import Document, TextNode

STAGE = "text_filter"
DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
STOPWORDS_FILE = os.path.join(DATA_DIR, "stopwords_en.txt")
FLAGGED_WORDS_FILE = os.path.join(DATA_DIR, "flagged_words_en.txt")
# OBELICS's common-word list (common_words.json) is not published with its code; wordfreq's English
# list stands in: every word wordfreq ranks, frequency 1e-8 and up (319,938 words in wordfreq 3.1.1).
COMMON_WORDS_SOURCE = "wordfreq 'large' English list"

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


@functools.lru_cache(maxsize=1)
def wordfreq_common_words() -> frozenset[str]:
    """wordfreq's English words (lower case, ASCII apostrophes, as ``words`` gives them), loaded
    on first use: about 0.3 s and 30 MB, paid only where a common-word check is configured."""
    from wordfreq import top_n_list

    return frozenset(top_n_list("en", 10**7, wordlist="large"))


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


def _char_flags(cps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(special, whitespace) per code point; the rare astral ones are looked up one by one."""
    special_t, space_t = _char_tables()
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


# OBELICS punctuation ratio: the text cut into runs of word characters or apostrophes (``[\\w']+``,
# Unicode letters, digits and "_") and single marks from this set; everything else is skipped.
PUNCTUATION_MARKS = ",;:?!."
_PUNCT_TOKEN_RE = re.compile(r"[\w']+|[,;:?!.]")
_WORD_RUN_CHAR_RE = re.compile(r"[\w']")


def punctuation_tokens(text: str) -> tuple[int, int]:
    """(tokens, marks): OBELICS's tokens of ``text`` (word runs and marks) and how many are marks."""
    tokens = _PUNCT_TOKEN_RE.findall(text)
    return len(tokens), sum(1 for t in tokens if t in PUNCTUATION_MARKS)


def punctuation_ratio(text: str, min_tokens: int = 0) -> float:
    """OBELICS: share of the tokens that are marks ``, ; : ? ! .``; 0 without tokens, and 1 (a
    pass) when ``min_tokens`` > 0 and the text has fewer tokens: too short to judge."""
    return _punctuation_ratio(*punctuation_tokens(text), min_tokens)


def _punctuation_ratio(tokens: int, marks: int, min_tokens: int) -> float:
    if not tokens:
        return 0.0
    if 0 < min_tokens and tokens < min_tokens:
        return 1.0
    return marks / tokens


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
# The compiled chain.
#
# ``filter_document`` runs on millions of documents. ``pipeline/_textchain.c`` computes the same
# values as the measures above (the ``TextStats`` ones ``build-m3w explain`` prints): it scans
# each text node once (special characters, tokens, words as 64-bit ids of their lower-cased
# characters), counts n-grams in a hash table, and applies the configured checks in order,
# stopping at each text's first failure. tests/pipeline/test_filters_fast.py compares every value
# with plain definitions (strings, tuples, Counters) on real pages and on arbitrary Unicode.

try:
    from pipeline import _textchain
except ImportError as e:  # a source checkout that was never installed
    raise ImportError("pipeline._textchain is not built: run `pip install -e .` (or `make install`) in the m3w checkout") from e


@functools.lru_cache(maxsize=1)
def _kernel_char_table() -> bytes:
    """The compiled chain's entry for every BMP code point (little-endian uint32): its lower-case
    code point with "’" read as "'" (bits 0-20, as ``words`` folds them), special (bit 21),
    whitespace (22), a letter (23), its lower case a letter (24), and bit 25 where ``str.lower``
    must decide: the lower case is not one character in isolation ("İ" becomes two, "Σ" depends
    on its neighbours) or would change whether the character is special or whitespace; bit 26
    where it belongs to an OBELICS punctuation-ratio word run (``[\\w']``), bit 27 on its marks."""
    special, space = _char_tables()
    alpha = np.fromiter((chr(c).isalpha() for c in range(0x10000)), dtype=bool, count=0x10000)
    low = np.arange(0x10000, dtype=np.uint32)
    complex_ = np.zeros(0x10000, dtype=bool)
    for c in range(0x10000):
        lc = chr(c).lower()
        if len(lc) != 1 or c == 0x3A3 or ord(lc) >= 0x10000:
            complex_[c] = True
        elif special[ord(lc)] != special[c] or space[ord(lc)] != space[c]:
            complex_[c] = True
        else:
            low[c] = ord(lc)
    low[ord("’")] = ord("'")
    # OBELICS punctuation tokens, on the original characters: [\w'] runs and the marks.
    word_run = np.fromiter((_WORD_RUN_CHAR_RE.fullmatch(chr(c)) is not None for c in range(0x10000)), dtype=bool, count=0x10000)
    mark = np.zeros(0x10000, dtype=bool)
    mark[[ord(c) for c in PUNCTUATION_MARKS]] = True
    flags = (
        (special.astype(np.uint32) << 21)
        | (space.astype(np.uint32) << 22)
        | (alpha.astype(np.uint32) << 23)
        | (alpha[low].astype(np.uint32) << 24)
        | (complex_.astype(np.uint32) << 25)
        | (word_run.astype(np.uint32) << 26)
        | (mark.astype(np.uint32) << 27)
    )
    return (low | flags).astype("<u4").tobytes()


def _kernel_checks(checks: list["Check"], vocabularies: list[frozenset[str]]) -> list[tuple[int, int, bool, float]]:
    """(measure, argument, is minimum, threshold) of each check; word lists become indexes into
    ``vocabularies`` (appended on first use)."""
    out = []
    for c in checks:
        name, arg = c.kernel
        if isinstance(arg, frozenset):
            if arg not in vocabularies:
                vocabularies.append(arg)
            arg = vocabularies.index(arg)
        out.append((_textchain.MEASURES[name], int(arg), c.bound == "min", float(c.threshold)))
    return out


def compiled_chain(node_cs: list["Check"], doc_cs: list["Check"]) -> "_textchain.TextChain":
    """The checks compiled: ``run(texts)`` gives (node failures ``[(node, check, value)]``, the
    document's first failure ``(check, value)`` or None), ``values(texts)`` every value. One
    call at a time per chain: ``filter_document`` keeps one per thread."""
    vocabularies: list[frozenset[str]] = []
    nodes = _kernel_checks(node_cs, vocabularies)
    docs = _kernel_checks(doc_cs, vocabularies)
    return _textchain.TextChain(_kernel_char_table(), vocabularies, nodes, docs)


_LOCAL = threading.local()


def _thread_chain(configured: tuple) -> "_textchain.TextChain":
    """This thread's compiled chain for the configured checks (a ``_configured`` result)."""
    chains = _LOCAL.__dict__.setdefault("chains", {})
    got = chains.get(id(configured))
    if got is None or got[0] is not configured:
        if len(chains) >= 64:
            chains.clear()
        got = chains[id(configured)] = (configured, compiled_chain(configured[0], configured[1]))
    return got[1]


# ---------------------------------------------------------------------------------------------
# Checks


class TextStats:
    """Lazily computed tokenizations of one text, shared by all checks on it.

    Plain lazy attributes rather than ``functools.cached_property``, whose per-access lock costs
    more than most measures on short paragraphs.
    """

    __slots__ = ("text", "_words", "_n_words", "_word_ids", "_special_ratio", "_paragraphs", "_lines", "_punct", "no_repeat_n")

    def __init__(self, text: str) -> None:
        self.text = text
        self._words: list[str] | None = None
        self._n_words: int | None = None
        self._word_ids: np.ndarray | None = None
        self._special_ratio: float | None = None
        self._paragraphs: list[str] | None = None
        self._lines: list[str] | None = None
        self._punct: tuple[int, int] | None = None
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

    def punctuation_ratio(self, min_tokens: int = 0) -> float:
        if self._punct is None:
            self._punct = punctuation_tokens(self.text)
        return _punctuation_ratio(*self._punct, min_tokens)

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
    # The same measure in the compiled chain: (its name in ``_textchain.MEASURES``, its argument:
    # an n-gram length or a word list).
    kernel: tuple[str, object]
    batch: Callable[[list[TextStats]], list[float]] | None = None

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


def _common(tf: TextFilterConfig) -> frozenset[str]:
    return load_word_list(tf.common_words_file) if tf.common_words_file else wordfreq_common_words()


def node_checks(tf: TextFilterConfig) -> list[Check]:
    """Paragraph (text node) checks, cheapest first (OBELICS node-level defaults)."""
    stop, flagged = _stopwords(), _flagged(tf)
    min_tokens = tf.node_punctuation_min_words or 0
    # Loaded only where configured: the list is large.
    common = _common(tf) if tf.node_min_common_word_ratio is not None else frozenset()
    spec: list[tuple[str, str, Callable[[TextStats], float], tuple[str, object], Callable | None]] = [
        ("node_min_words", "min", lambda s: s.n_words, ("words", 0), None),
        ("node_max_words", "max", lambda s: s.n_words, ("words", 0), None),
        ("node_max_special_char_ratio", "max", lambda s: s.special_ratio, ("special_ratio", 0), _batched(lambda s: s.special_ratio)),
        ("node_min_stopword_ratio", "min", lambda s: word_ratio(s.words, stop), ("vocab_ratio", stop), None),
        ("node_max_flagged_word_ratio", "max", lambda s: word_ratio(s.words, flagged), ("vocab_ratio", flagged), None),
        ("node_min_punctuation_ratio", "min", lambda s: s.punctuation_ratio(min_tokens), ("punctuation_ratio", min_tokens), None),
        ("node_min_common_word_ratio", "min", lambda s: word_ratio(s.words, common), ("vocab_ratio", common), None),
        (
            "node_max_char_10gram_repetition",
            "max",
            lambda s: char_ngram_repetition(s.text, 10),
            ("char_repetition", 10),
            lambda ss: char_ngram_repetitions([s.text for s in ss], 10),
        ),
        (
            "node_max_word_5gram_repetition",
            "max",
            lambda s: word_ngram_repetition(s.words, 5),
            ("word_repetition", 5),
            lambda ss: word_ngram_repetitions([s.words for s in ss], 5),
        ),
    ]
    return [Check(k, b, getattr(tf, k), m, kn, bt) for k, b, m, kn, bt in spec if getattr(tf, k) is not None]


def doc_checks(tf: TextFilterConfig) -> list[Check]:
    """Document checks on the text left after paragraph filtering, cheapest first (OBELICS
    document-level and Gopher quality/repetition defaults)."""
    stop, flagged = _stopwords(), _flagged(tf)
    common = _common(tf) if tf.doc_min_common_word_ratio is not None else frozenset()
    spec: list[tuple[str, str, Callable[[TextStats], float], tuple[str, object]]] = [
        ("doc_min_words", "min", lambda s: s.n_words, ("words", 0)),
        ("doc_max_words", "max", lambda s: s.n_words, ("words", 0)),
        ("doc_max_special_char_ratio", "max", lambda s: s.special_ratio, ("special_ratio", 0)),
        ("doc_min_stopword_ratio", "min", lambda s: word_ratio(s.words, stop), ("vocab_ratio", stop)),
        ("doc_max_flagged_word_ratio", "max", lambda s: word_ratio(s.words, flagged), ("vocab_ratio", flagged)),
        ("doc_min_punctuation_ratio", "min", lambda s: s.punctuation_ratio(0), ("punctuation_ratio", 0)),
        ("doc_min_common_word_ratio", "min", lambda s: word_ratio(s.words, common), ("vocab_ratio", common)),
        ("gopher_min_stop_words", "min", lambda s: gopher_stop_word_count(s.words), ("vocab_count", GOPHER_STOP_WORDS)),
        ("gopher_min_mean_word_length", "min", lambda s: mean_word_length(s.words), ("mean_word_length", 0)),
        ("gopher_max_mean_word_length", "max", lambda s: mean_word_length(s.words), ("mean_word_length", 0)),
        ("gopher_max_symbol_word_ratio", "max", lambda s: symbol_word_ratio(s.text, s.n_words), ("symbol_word_ratio", 0)),
        ("gopher_max_bullet_lines_ratio", "max", lambda s: bullet_lines_ratio(s.text), ("bullet_lines_ratio", 0)),
        ("gopher_max_ellipsis_lines_ratio", "max", lambda s: ellipsis_lines_ratio(s.text), ("ellipsis_lines_ratio", 0)),
        ("gopher_min_alpha_words_ratio", "min", lambda s: alpha_words_ratio(s.text, s.words), ("alpha_words_ratio", 0)),
        ("gopher_max_dup_para_frac", "max", lambda s: dup_frac(s.paragraphs), ("dup_para_frac", 0)),
        ("gopher_max_dup_para_char_frac", "max", lambda s: dup_char_frac(s.paragraphs, len(s.text)), ("dup_para_char_frac", 0)),
        ("gopher_max_dup_line_frac", "max", lambda s: dup_frac(s.lines), ("dup_line_frac", 0)),
        ("gopher_max_dup_line_char_frac", "max", lambda s: dup_char_frac(s.lines, len(s.text)), ("dup_line_char_frac", 0)),
        ("doc_max_word_repetition", "max", lambda s: word_ngram_repetition(s.words, 5), ("word_repetition", 5)),
        ("doc_max_char_repetition", "max", lambda s: char_ngram_repetition(s.text, 10), ("char_repetition", 10)),
    ]
    checks = [Check(k, b, getattr(tf, k), m, kn) for k, b, m, kn in spec if getattr(tf, k) is not None]
    for n, frac in sorted((tf.gopher_top_ngram_char_frac or {}).items()):
        checks.append(
            Check(
                f"gopher_top_{n}gram_char_frac",
                "max",
                frac,
                lambda s, n=n: top_ngram_char_frac(s.words, n, len(s.text), s.word_ids),
                ("top_ngram_char_frac", n),
            )
        )
    for n, frac in sorted((tf.gopher_dup_ngram_char_frac or {}).items()):
        checks.append(
            Check(
                f"gopher_dup_{n}gram_char_frac",
                "max",
                frac,
                lambda s, n=n: _dup_ngram_cached(s, n),
                ("dup_ngram_char_frac", n),
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


# ---------------------------------------------------------------------------------------------
# The chain on one document

# Documents per ``Rejects`` element: ``FilterText`` filters this many before emitting their
# node and document rejects together (one element instead of ~35 per document).
BATCH_DOCS = 64


def filter_document(doc: Document, cfg: Config) -> tuple[Document | None, list[Reject]]:
    """Apply URL blocklists, language ID, paragraph and document filters to one document.

    Returns (the kept document with failing text nodes removed and ``language``/``language_score``
    set, or None when the document is dropped; one Reject per removed node and for the dropped
    document). The input is not modified. Image nodes are untouched; the image-count rule is
    ``image_count_reason``, applied once images are resolved.
    """
    nodes = doc.nodes
    text_at = [j for j, n in enumerate(nodes) if isinstance(n, TextNode)]
    texts = [nodes[j].text for j in text_at]
    screened = _screen(doc, texts, cfg)
    if isinstance(screened, Reject):
        return None, [screened]
    lang, score = screened
    configured = _configured(cfg.text_filters)
    node_cs, doc_cs, suffix = configured
    chain = _thread_chain(configured)
    foreign = node_language_failures(texts, cfg.language)
    if foreign:  # those nodes are gone before the text checks, as failing nodes are before doc checks
        gone = {i for i, _, _ in foreign}
        left = [i for i in range(len(texts)) if i not in gone]
        node_failed, doc_failed = chain.run([texts[i] for i in left])
        node_failed = [(left[i], c, v) for i, c, v in node_failed]
    else:
        node_failed, doc_failed = chain.run(texts)
    rejects = []
    if node_failed or foreign:
        prov = doc.provenance
        where = (prov.warc_filename, prov.warc_record_offset) if prov is not None else ("", -1)
        dropped_nodes = []  # (node index, reason, detail)
        for i, c, v in node_failed:  # detail(...), the threshold part formatted once per configuration
            name = node_cs[c].name
            value = f"{v:.4g}" if v.__class__ is float else str(v)
            dropped_nodes.append((text_at[i], name, f"{value}{suffix[name]}{text_at[i]})"))
        for i, node_lang, node_score in foreign:
            dropped_nodes.append((text_at[i], NODE_LANGUAGE, f"{node_lang} {node_score:.3f} (node {text_at[i]})"))
        if foreign:
            dropped_nodes.sort(key=operator.itemgetter(0))
        rejects = [Reject(STAGE, name, doc.url, where[0], where[1], d) for _, name, d in dropped_nodes]
    if doc_failed is not None:
        check = doc_cs[doc_failed[0]]
        rejects.append(Reject.of(STAGE, check.name, doc.provenance, doc.url, detail(check, doc_failed[1])))
        return None, rejects
    if rejects:
        dropped = {r for r, _, _ in dropped_nodes}
        nodes = [n for j, n in enumerate(nodes) if j not in dropped]
    tf = cfg.text_filters
    if tf.perplexity_model is not None and tf.doc_max_perplexity is not None:  # last: it costs the most
        from pipeline import perplexity as P

        text = "\n\n".join(n.text for n in nodes if isinstance(n, TextNode))
        pp = P.perplexity(P.load(tf.perplexity_model), text)
        if pp > tf.doc_max_perplexity:
            rejects.append(Reject.of(STAGE, PERPLEXITY, doc.provenance, doc.url, f"{pp:.1f} (max {_fmt(tf.doc_max_perplexity)})"))
            return None, rejects
    return dataclasses.replace(doc, nodes=list(nodes), language=lang, language_score=round(score, 4)), rejects


def filter_documents(docs: list[Document], cfg: Config) -> list[tuple[Document | None, list[Reject]]]:
    """``filter_document`` of each document, in order."""
    return [filter_document(d, cfg) for d in docs]


def _screen(doc: Document, texts: list[str], cfg: Config) -> tuple[str, float] | Reject:
    """URL blocklists then language ID of the text nodes ``texts``: the document's Reject, or
    its (language, score)."""
    tf = cfg.text_filters
    blocked = url_block_reason(doc.url, tf)
    if blocked:
        return Reject.of(STAGE, blocked[0], doc.provenance, doc.url, blocked[1])
    lang, score = identify(texts, cfg.language)
    reason = language_reason(lang, score, cfg.language)
    if reason:
        return Reject.of(STAGE, reason, doc.provenance, doc.url, f"{lang or 'none'} {score:.3f}")
    return lang, score


NODE_LANGUAGE = "node_language"  # the paragraph-level language check's reject reason
PERPLEXITY = "doc_max_perplexity"  # the KenLM check's reject reason (pipeline/perplexity.py)


def identify(texts: str | list[str], lc: LanguageConfig) -> tuple[str, float]:
    """(language, score) of a document's text nodes, or of one text, as ``lc`` configures it."""
    return langid.detect(texts, lc.detector, lc.keep, lc.min_score, lc.score)


def node_language(text: str, lc: LanguageConfig) -> tuple[str, float] | None:
    """(language, score) of one text node when the paragraph-level check judges it: on, and the
    node at least ``node_min_chars`` long with letters in it; else None."""
    if lc.node_min_chars is None or not text or len(text) < lc.node_min_chars:
        return None
    lang, score = identify(text, lc)
    return (lang, score) if lang else None


def node_language_failures(texts: list[str], lc: LanguageConfig) -> list[tuple[int, str, float]]:
    """(index, language, score) of each text node the paragraph-level language check drops: read
    as a language outside ``keep``, or under ``min_score`` (OBELICS's node-level language ID)."""
    if lc.node_min_chars is None:
        return []
    out = []
    for i, t in enumerate(texts):
        got = node_language(t, lc)
        if got is not None and language_reason(got[0], got[1], lc):
            out.append((i, got[0], got[1]))
    return out


def image_count_reason(doc: Document, cfg: Config) -> str | None:
    """``doc_min_images`` / ``doc_max_images`` when the document's image count is out of range
    (OBELICS keeps 1–30); call once images are resolved and filtered."""
    tf, n = cfg.text_filters, len(doc.images)
    if tf.doc_min_images is not None and n < tf.doc_min_images:
        return "doc_min_images"
    if tf.doc_max_images is not None and n > tf.doc_max_images:
        return "doc_max_images"
    return None


def __getattr__(name: str):
    # The Beam stage lives in pipeline.filters_stage, loaded on first use: the filters need no Beam.
    if name == "FilterText":
        from pipeline.filters_stage import FilterText

        return FilterText
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
