"""Document perplexity under a local KenLM model (OBELICS's last document filter).

OBELICS scores a document with a KenLM model trained on Wikipedia and drops it above 1500. As in
CCNet, whose scorer OBELICS reuses, each line is scored on its own (KenLM adds sentence start and
end), the log10 probabilities are summed and so are the lengths (words + 1 for the end of
sentence): perplexity = 10 ** (-sum log10 P / sum length). m3w lower-cases the text and collapses
whitespace; OBELICS also runs its SentencePiece tokenizer, so pass a model trained on text
prepared the same way as the model expects. No model ships with m3w and none is downloaded: the
filter runs only when ``text_filters.perplexity_model`` names a local ``.arpa`` or ``.bin`` file.
"""
from __future__ import annotations

import functools
import threading
from typing import Any

_LOCK = threading.Lock()


class PerplexityError(ValueError):
    """The model cannot be used; the message says what to do."""


@functools.lru_cache(maxsize=4)
def _model(path: str) -> Any:
    try:
        import kenlm
    except ImportError:
        raise PerplexityError(
            "text_filters.perplexity_model needs the kenlm package: pip install -e '.[perplexity]' (or pip install kenlm)"
        ) from None
    try:
        return kenlm.Model(path)
    except (OSError, RuntimeError) as e:
        raise PerplexityError(f"text_filters.perplexity_model {path}: not a KenLM model ({e})") from None


def load(path: str) -> Any:
    """The KenLM model at ``path``, loaded once per process."""
    with _LOCK:
        return _model(path)


def perplexity(model: Any, text: str) -> float:
    """CCNet's document perplexity of ``text`` (lines scored one by one); 0 for empty text."""
    log_score, length = 0.0, 0
    for line in text.lower().split("\n"):
        words = line.split()
        if not words:
            continue
        log_score += model.score(" ".join(words), bos=True, eos=True)
        length += len(words) + 1
    return 10.0 ** (-log_score / length) if length else 0.0
