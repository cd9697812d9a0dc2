"""MinHash signatures: estimates match exact shingle Jaccard and datasketch's, on real page text."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from datasketch import MinHash

from dedup.minhash import (
    candidate_probability,
    has_shingles,
    jaccard_estimate,
    lsh_band_keys,
    minhash_signatures,
    shingle_hashes,
)
from tests.conftest import shared_path

NUM_PERM = 128
_WORD = re.compile(r"[0-9a-z\x80-\U0010ffff]+")


@pytest.fixture(scope="module")
def articles() -> list[str]:
    truth = json.loads(shared_path("extraction", "article_benchmark", "ground-truth.json").read_text())
    return [v["articleBody"] for v in truth.values() if len(v["articleBody"].split()) >= 150][:40]


def _edited(text: str, rate: float, rng: np.random.Generator) -> str:
    """Replace a share ``rate`` of the words: a near copy with a controlled Jaccard."""
    words = text.split()
    for i in rng.choice(len(words), size=max(1, int(rate * len(words))), replace=False):
        words[i] = "edited"
    return " ".join(words)


def _exact(a: str, b: str) -> float:
    sa, sb = set(shingle_hashes(a, 5).tolist()), set(shingle_hashes(b, 5).tolist())
    return len(sa & sb) / len(sa | sb)


def _datasketch(text: str) -> MinHash:
    words = _WORD.findall(text.lower())
    m = MinHash(num_perm=NUM_PERM, seed=1)
    m.update_batch([" ".join(words[i : i + 5]).encode() for i in range(len(words) - 4)])
    return m


def test_estimates_agree_with_exact_jaccard_and_with_datasketch(articles):
    rng = np.random.default_rng(0)
    pairs = [(t, _edited(t, rate, rng)) for t in articles for rate in (0.01, 0.05, 0.15)]
    sigs = minhash_signatures([x for p in pairs for x in p], NUM_PERM, 5, 1)
    ours, theirs, exact = [], [], []
    for i, (a, b) in enumerate(pairs):
        exact.append(_exact(a, b))
        ours.append(jaccard_estimate(sigs[2 * i], sigs[2 * i + 1]))
        theirs.append(_datasketch(a).jaccard(_datasketch(b)))
    exact, ours, theirs = map(np.asarray, (exact, ours, theirs))
    assert exact.min() < 0.5 < 0.9 < exact.max()  # the edits span the interesting range
    # Unbiased, and as precise as datasketch's k-permutation MinHash (sd ~ sqrt(J(1-J)/k)).
    assert abs((ours - exact).mean()) < 0.01
    rmse_ours = np.sqrt(((ours - exact) ** 2).mean())
    rmse_theirs = np.sqrt(((theirs - exact) ** 2).mean())
    assert rmse_ours < 0.05 and rmse_theirs < 0.05
    assert rmse_ours < 1.3 * rmse_theirs
    assert np.abs(ours - theirs).max() < 0.2


def test_unrelated_pages_estimate_near_zero_and_identical_pages_one(articles):
    sigs = minhash_signatures(articles + articles[:1], NUM_PERM, 5, 1)
    assert jaccard_estimate(sigs[0], sigs[-1]) == 1.0
    off = [jaccard_estimate(sigs[i], sigs[j]) for i in range(10) for j in range(i + 1, 10)]
    assert max(off) < 0.1


def test_batching_and_case_do_not_change_a_signature(articles):
    together = minhash_signatures(articles[:5], NUM_PERM, 5, 7)
    alone = np.stack([minhash_signatures([t], NUM_PERM, 5, 7)[0] for t in articles[:5]])
    np.testing.assert_array_equal(together, alone)
    upper = minhash_signatures([articles[0].upper()], NUM_PERM, 5, 7)[0]
    np.testing.assert_array_equal(upper, together[0])
    assert not np.array_equal(minhash_signatures(articles[:1], NUM_PERM, 5, 8)[0], together[0])


def test_texts_without_words_have_no_shingles_and_short_texts_one():
    sigs = minhash_signatures(["", " ... !! ", "three word text", "three word text"], 64, 5, 1)
    assert not has_shingles(sigs[0]) and not has_shingles(sigs[1])
    assert has_shingles(sigs[2]) and jaccard_estimate(sigs[2], sigs[3]) == 1.0
    assert shingle_hashes("three word text", 5).size == 1


def test_band_keys_collide_for_near_copies_only(articles):
    rng = np.random.default_rng(1)
    near = _edited(articles[0], 0.01, rng)
    sigs = minhash_signatures([articles[0], near, articles[1]], 112, 5, 1)
    keys = [set(lsh_band_keys(s, 14, 8)) for s in sigs]
    assert len(keys[0]) == 14
    assert keys[0] & keys[1]
    assert not keys[0] & keys[2]
    assert candidate_probability(0.9, 14, 8) > 0.99 > 0.1 > candidate_probability(0.4, 14, 8)
