"""Offline language identification of documents, by a character-weighted vote over chunks.

Web pages mix languages (a translated manual with untranslated sections, an English article with
a Portuguese comment block), so one label for the whole text hides how much of it is in that
language. We cut the document's text nodes into chunks of about ``CHUNK_CHARS`` characters, label
each chunk, and return the language holding most characters with its share of the characters as
the score: ``("en", 0.62)`` means 62% of the text reads as English.

Detectors (both ship their models inside the package; nothing is downloaded):
- ``resiliparse`` (default): resiliparse's ``detect_fast``, a C profile matcher, ~10 µs per chunk.
- ``py3langid``: langid.py's naive Bayes model, more accurate on short code-heavy text but
  10–20x slower. docs/bench/filters.md has the measurements behind the default.
Models are loaded once per process, lazily; ``load`` lets ``DoFn.setup`` pay that up front.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Callable, Iterable

CHUNK_CHARS = 800  # shorter chunks misread code and lists; longer ones blur mixed pages
MAX_CHUNKS = 8  # ~6.4k characters decide; bounds the cost of long documents
DETECTORS = ("resiliparse", "py3langid")

_LOCK = threading.Lock()
_LOADED: dict[str, Callable[[str], str]] = {}


def _resiliparse() -> Callable[[str], str]:
    from resiliparse.parse.lang import detect_fast

    def label(text: str) -> str:
        lang = detect_fast(text)[0]
        return "" if lang == "unknown" else lang

    return label


def _py3langid() -> Callable[[str], str]:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def label(text: str) -> str:
        return str(ident.classify(text)[0])

    return label


def detector(name: str = "resiliparse") -> Callable[[str], str]:
    """The chunk labeller ``text -> ISO 639-1 code`` ("" when unknown), loaded once per process."""
    fn = _LOADED.get(name)
    if fn is None:
        if name not in DETECTORS:
            raise ValueError(f"unknown language detector {name!r}; use one of {', '.join(DETECTORS)}")
        with _LOCK:
            fn = _LOADED.get(name)
            if fn is None:
                fn = _LOADED[name] = _resiliparse() if name == "resiliparse" else _py3langid()
    return fn


def load(name: str = "resiliparse") -> None:
    """Load the model now (``DoFn.setup``), so the first document does not pay for it."""
    detector(name)


def chunks(texts: Iterable[str], size: int = CHUNK_CHARS, limit: int = MAX_CHUNKS) -> list[str]:
    """Consecutive texts joined into chunks of at least ``size`` characters (the last may be
    shorter), at most ``limit`` chunks; a text longer than ``size`` is cut at a space."""
    out: list[str] = []
    buf: list[str] = []
    n = 0
    for t in texts:
        while len(t) > 2 * size and len(out) < limit:
            cut = t.rfind(" ", size, 2 * size)
            cut = cut if cut > 0 else size
            buf.append(t[:cut])
            out.append("\n".join(buf))
            buf, n, t = [], 0, t[cut:]
        if len(out) >= limit:
            return out
        buf.append(t)
        n += len(t)
        if n >= size:
            out.append("\n".join(buf))
            buf, n = [], 0
            if len(out) >= limit:
                return out
    if buf:
        out.append("\n".join(buf))
    return out


def detect(texts: str | Iterable[str], name: str = "resiliparse") -> tuple[str, float]:
    """(language holding most characters, its share of the characters in [0, 1]).

    ``texts`` is one string or a document's text nodes in order. Text without letters gives
    ``("", 0.0)``: there is nothing to identify.
    """
    parts = [texts] if isinstance(texts, str) else list(texts)
    label = detector(name)
    votes: Counter[str] = Counter()
    total = 0
    for chunk in chunks(parts):
        weight = len(chunk)
        total += weight
        if any(c.isalpha() for c in chunk):
            votes[label(chunk)] += weight
    votes.pop("", None)
    if not votes or total == 0:
        return "", 0.0
    lang, n = votes.most_common(1)[0]
    return lang, n / total


def text_share(texts: Iterable[str | None], languages: Iterable[str], name: str = "py3langid", min_chars: int = 20) -> float:
    """Share of the characters of ``texts`` (paragraphs of ``min_chars`` or more) that detector
    ``name`` reads as one of ``languages``, paragraph by paragraph: a second opinion on a page's
    language, independent of the whole-page verdict."""
    label = detector(name)
    wanted = set(languages)
    total = hits = 0
    for t in texts:
        if t and len(t) >= min_chars:
            total += len(t)
            hits += len(t) if label(t) in wanted else 0
    return hits / total if total else 0.0
