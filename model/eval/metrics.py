"""The metrics the Flamingo paper reports: CIDEr (COCO caption toolkit), VQA accuracy (the
official VQA evaluation), ROC-AUC (HatefulMemes) and top-k accuracy (ImageNet)."""
from __future__ import annotations

import re
import shutil
from collections.abc import Sequence

import numpy as np


def cider(references: dict, predictions: dict) -> float:
    """CIDEr-D as ``pycocoevalcap`` computes it, after its PTB tokenizer (which runs Java).

    references {id: [caption, …]}, predictions {id: caption} -> corpus CIDEr (×1, not ×100).
    """
    if shutil.which("java") is None:
        raise RuntimeError("CIDEr needs Java for the COCO toolkit's PTB tokenizer: install a JRE (e.g. openjdk-17-jre)")
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    keys = sorted(predictions)
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in references[k]] for k in keys})
    res = tok.tokenize({k: [{"caption": predictions[k]}] for k in keys})
    score, _ = Cider().compute_score(gts, res)
    return float(score)


# The official VQA evaluation's answer normalisation (vqaEval.py): punctuation, number words,
# articles and apostrophe-less contractions.
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA = re.compile(r"(\d)(,)(\d)")
_NUMBERS = {w: str(i) for i, w in enumerate("none one two three four five six seven eight nine ten".split())}
_NUMBERS["zero"] = "0"
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "hes": "he's", "im": "i'm",
    "isnt": "isn't", "itll": "it'll", "ive": "i've", "shouldnt": "shouldn't", "thats": "that's",
    "theres": "there's", "theyre": "they're", "wasnt": "wasn't", "werent": "weren't", "whats": "what's",
    "wont": "won't", "wouldnt": "wouldn't", "youre": "you're", "youve": "you've", "lets": "let's",
}


def normalize_answer(text: str) -> str:
    """An answer as the official VQA evaluation compares it: "Two dogs!" -> "2 dogs"."""
    s = text.replace("\n", " ").replace("\t", " ").strip()
    for p in _PUNCT:
        if p + " " in s or " " + p in s or _COMMA.search(s):
            s = s.replace(p, "")
        else:
            s = s.replace(p, " ")
    s = _PERIOD.sub("", s)
    words = [_NUMBERS.get(w, w) for w in s.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy of one answer against the human answers (usually 10): for each of the subsets
    that leave one human out, min(#humans in the subset that gave the answer / 3, 1); averaged."""
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    if len(gts) <= 1:  # no subsets to leave one out of
        return float(bool(gts) and gts[0] == pred)
    accs = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1:]
        accs.append(min(sum(a == pred for a in others) / 3.0, 1.0))
    return float(np.mean(accs))


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random
    negative (ties count half), i.e. the Mann–Whitney U statistic over n_pos·n_neg."""
    y = np.asarray(labels, int)
    s = np.asarray(scores, float)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        raise ValueError("ROC-AUC needs at least one positive and one negative example")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def top_k(labels: Sequence[int], scores, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores; scores [N, n_classes]."""
    s = np.asarray(scores, float)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return float(np.mean([int(y) in row for y, row in zip(labels, top)]))
