"""Offline language identification with py3langid (its model ships inside the package).

py3langid gives a calibrated probability (``norm_probs=True``), which is what a ``min_score``
threshold needs; resiliparse's faster detector returns an out-of-place rank instead, and was less
accurate on our real pages (docs/bench/filters.md). The model is loaded once per process, lazily,
so importing this module costs nothing and each Beam worker pays the load once.
"""
from __future__ import annotations

import threading

# Language ID saturates long before this; scoring only a prefix bounds the cost of huge documents.
MAX_CHARS = 2000

_IDENTIFIER = None
_LOCK = threading.Lock()


def _identifier():
    global _IDENTIFIER
    if _IDENTIFIER is None:
        with _LOCK:
            if _IDENTIFIER is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


def load() -> None:
    """Load the model now (``DoFn.setup``), so the first document does not pay for it."""
    _identifier()


def detect(text: str) -> tuple[str, float]:
    """The most likely ISO 639-1 language of ``text`` and its probability in [0, 1].

    Text without letters gives ``("", 0.0)``: there is nothing to identify.
    """
    sample = text[:MAX_CHARS]
    if not any(c.isalpha() for c in sample):
        return "", 0.0
    lang, prob = _identifier().classify(sample)
    return str(lang), float(prob)
