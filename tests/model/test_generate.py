"""KV-cached inference: greedy = uncached argmax decoding, beam(1) = greedy, scores = likelihoods."""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.configs import FlamingoConfig, get_config
from model.flamingo import Flamingo, random_params
from model import generate

FAST = {"xla_backend_optimization_level": 0}  # tiny models: compile time dominates, not run time
greedy = functools.partial(generate.greedy, compiler_options=FAST)
beam_search = functools.partial(generate.beam_search, compiler_options=FAST)
score = functools.partial(generate.score, compiler_options=FAST)
IMG, EOC, PAD = 512, 513, 0
N_NEW = 6
# Two left-padded prompts, two images each (the second row's second image is never referenced).
PROMPT = np.array([[IMG, 5, 6, 7, EOC, IMG, 8, 9],
                   [PAD, PAD, PAD, IMG, 10, 11, 12, 13]], np.int32)
MASK = np.ones_like(PROMPT, bool)
MASK[1, :3] = False


@functools.lru_cache(maxsize=None)
def setup(layout: str):
    tiny = get_config(f"tiny-{layout}")  # shrunk: decoding compiles the LM twice (prompt and step)
    cfg = tiny.replace(vision=dataclasses.replace(tiny.vision, n_layers=1),
                       resampler=dataclasses.replace(tiny.resampler, n_layers=1),
                       lm=dataclasses.replace(tiny.lm, n_layers=2))
    # Open gates and wider weights, so the images and every block shape the predictions.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.ones_like(x) if getattr(path[-1], "key", "").endswith("_gate") else x,
        nn.unbox(random_params(cfg, std=0.1)))
    s = cfg.vision.image_size
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 2, 1, s, s, 3)), jnp.float32)
    return cfg, params, images


@functools.lru_cache(maxsize=None)
def full_logprobs(cfg: FlamingoConfig):
    """Uncached: jitted (params, images, ids, mask) -> log-probs [B, L, V] over the whole sequence."""
    m = Flamingo(cfg)
    fn = lambda p, x, ids, mask: jax.nn.log_softmax(m.apply({"params": p}, x, ids, attention_mask=mask))
    return jax.jit(fn, compiler_options=FAST)


def uncached(cfg, params, images, generated):
    ids = np.concatenate([PROMPT, np.asarray(generated)], axis=1)
    mask = np.concatenate([MASK, np.ones(generated.shape, bool)], axis=1)
    return np.asarray(full_logprobs(cfg)(params, images, jnp.asarray(ids), jnp.asarray(mask)))


def until_eos(seq, eos=EOC) -> int:
    """Number of tokens up to and including the first eos."""
    hits = np.flatnonzero(np.asarray(seq) == eos)
    return int(hits[0]) + 1 if hits.size else len(seq)


@pytest.mark.parametrize("layout", ["gpt2", "llama"])
def test_cached_greedy_equals_uncached_decoding(layout):
    cfg, params, images = setup(layout)
    model = Flamingo(cfg)
    out = np.asarray(greedy(model, params, images, PROMPT, N_NEW, attention_mask=MASK))
    assert out.shape == (2, N_NEW) and out.dtype == np.int32
    lp = uncached(cfg, params, images, out)
    lp0 = PROMPT.shape[1] - 1
    for b in range(2):
        n = until_eos(out[b])
        # Each cached step picked what a full forward pass over the same prefix predicts.
        assert out[b, :n].tolist() == lp[b, lp0:lp0 + n].argmax(-1).tolist()
        assert np.all(out[b, n:] == EOC)
    assert out[0].tolist() != out[1].tolist()


def test_beam_search_with_one_beam_is_greedy():
    cfg, params, images = setup("gpt2")
    model = Flamingo(cfg)
    g = greedy(model, params, images, PROMPT, N_NEW, attention_mask=MASK)
    b = beam_search(model, params, images, PROMPT, N_NEW, num_beams=1, attention_mask=MASK)
    assert np.asarray(b).tolist() == np.asarray(g).tolist()


def test_beam_search_scores_are_the_sequences_log_likelihoods():
    cfg, params, images = setup("gpt2")
    model = Flamingo(cfg)
    seqs, scores = beam_search(model, params, images, PROMPT, N_NEW, num_beams=3, attention_mask=MASK,
                               return_scores=True)
    seqs = np.asarray(seqs)
    lp = uncached(cfg, params, images, seqs)
    lp0 = PROMPT.shape[1] - 1
    for b in range(2):
        n = until_eos(seqs[b])
        expect = sum(lp[b, lp0 + t, seqs[b, t]] for t in range(n))
        assert abs(float(scores[b]) - expect) < 1e-3
        assert np.all(seqs[b, n:] == EOC)


def test_decoding_stops_at_end_of_chunk():
    cfg, params, images = setup("gpt2")
    model = Flamingo(cfg)
    free = np.asarray(greedy(model, params, images, PROMPT, N_NEW, attention_mask=MASK))
    stop = int(free[0, 1])  # pretend the second generated token of row 0 ends the chunk
    out = np.asarray(greedy(model, params, images, PROMPT, N_NEW, eos_id=stop, attention_mask=MASK))
    assert out[0, :2].tolist() == free[0, :2].tolist()
    assert np.all(out[0, 2:] == stop)
    beams = np.asarray(beam_search(model, params, images, PROMPT, N_NEW, eos_id=stop, num_beams=1,
                                   attention_mask=MASK))
    assert beams.tolist() == out.tolist()


def test_scores_of_candidates_equal_full_forward_log_likelihoods():
    cfg, params, images = setup("gpt2")
    model = Flamingo(cfg)
    cands = [[20, 21, EOC], [30], [40, 41]]
    got = np.asarray(score(model, params, images, PROMPT, cands, attention_mask=MASK))
    assert got.shape == (2, 3)
    lp0 = PROMPT.shape[1] - 1
    for c, cand in enumerate(cands):
        padded = np.array([cand + [EOC] * (N_NEW - len(cand))] * 2, np.int32)
        lp = uncached(cfg, params, images, padded)  # shares the compiled forward pass above
        for b in range(2):
            expect = sum(lp[b, lp0 + t, tok] for t, tok in enumerate(cand))
            assert abs(got[b, c] - expect) < 1e-3
    with pytest.raises(ValueError, match="non-empty"):
        score(model, params, images, PROMPT, [[1], []])
