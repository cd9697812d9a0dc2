"""The evaluation metrics against hand-computed values: CIDEr-D (COCO toolkit), VQA accuracy on
worked examples of the official definition, ROC-AUC and top-k."""
from __future__ import annotations

import shutil

import pytest

from model.eval import metrics

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="CIDEr's PTB tokenizer (pycocoevalcap) needs Java")


@needs_java
def test_cider_matches_hand_computed_values():
    # Two images whose references share no n-gram: each n-gram's idf is log(2), and a prediction
    # equal to its reference has cosine 1 for n = 1..4, so CIDEr-D = 10 · mean(1, 1, 1, 1) = 10.
    refs = {"a": ["red bicycle leaning on fence"], "b": ["small boat crossing calm lake"]}
    assert metrics.cider(refs, {"a": "Red bicycle, leaning on fence.", "b": "small boat crossing calm lake"}) == pytest.approx(10.0)
    # Three-word captions have no 4-grams: that order scores 0, so 10 · 3/4.
    refs = {"a": ["red bicycle leans"], "b": ["boat crossing lake"]}
    assert metrics.cider(refs, {"a": "red bicycle leans", "b": "boat crossing lake"}) == pytest.approx(7.5)
    # Nothing in common with the references: 0.
    assert metrics.cider(refs, {"a": "boat crossing lake", "b": "red bicycle leans"}) == pytest.approx(0.0)


@needs_java
def test_cider_equals_pycocoevalcap_on_the_same_inputs():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs = {1: ["A cat sits on the mat.", "a cat on a mat"], 2: ["A dog runs in the park.", "dog running"],
            3: ["Two people ride bikes.", "cyclists on a road"]}
    preds = {1: "a cat on the mat", 2: "a dog runs", 3: "people on bikes"}
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in preds.items()})
    assert metrics.cider(refs, preds) == pytest.approx(Cider().compute_score(gts, res)[0])


def test_vqa_accuracy_worked_examples():
    ten = lambda ans, n, other="blue": [ans] * n + [other] * (10 - n)
    # min(#humans/3, 1) over the 10 subsets of 9 humans, averaged:
    assert metrics.vqa_accuracy("red", ten("red", 4)) == 1.0  # every subset keeps >= 3
    assert metrics.vqa_accuracy("red", ten("red", 3)) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)  # 0.9
    assert metrics.vqa_accuracy("red", ten("red", 2)) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)  # 0.6
    assert metrics.vqa_accuracy("red", ten("red", 1)) == pytest.approx(9 * (1 / 3) / 10)  # 0.3
    assert metrics.vqa_accuracy("green", ten("red", 10)) == 0.0
    # The official normalisation: case, punctuation, number words, articles, contractions.
    assert metrics.vqa_accuracy("Two!", ten("2", 3)) == pytest.approx(0.9)
    assert metrics.vqa_accuracy("the cat.", ten("a cat", 10)) == 1.0
    assert metrics.vqa_accuracy("dont know", ten("don't know", 10)) == 1.0
    assert metrics.normalize_answer("  Yes, it IS the 3.5 mm one ") == "yes it is 3.5 mm 1"


def test_roc_auc_and_top_k():
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half
    assert metrics.roc_auc([1, 0, 1], [0.9, 0.1, 0.8]) == 1.0
    with pytest.raises(ValueError, match="positive and one negative"):
        metrics.roc_auc([1, 1], [0.2, 0.3])
    scores = [[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]
    assert metrics.top_k([1, 2, 2], scores, 1) == pytest.approx(2 / 3)
    assert metrics.top_k([1, 2, 2], scores, 2) == pytest.approx(2 / 3)
    assert metrics.top_k([1, 2, 2], scores, 3) == 1.0
