"""Inference with a KV cache: greedy decoding, beam search, and log-likelihood scoring.

Prompts of different lengths are left-padded, with `attention_mask` [B, Lp] marking real tokens
(positions skip the padding, so a padded prompt decodes exactly as it would alone). Images are
encoded once; the visual tokens are reused for every decoding step. Open-ended tasks use beam
search with 3 beams stopping at `<|endofchunk|>` (paper, OpenFlamingo); close-ended tasks rank
candidates by `score`.

Each entry point runs as one jitted function per (config, shapes); decoding steps are a
`lax.scan`, so a call compiles once and then runs without Python in the loop.
`compiler_options` are passed to XLA (e.g. `{"xla_backend_optimization_level": 0}` halves
compile time for tiny models on CPU).
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from model.configs import FlamingoConfig
from model.flamingo import Flamingo, cache_for

_NEG = -1e9  # a finite "impossible" score: -inf would turn into NaN in (-inf) - (-inf)


def _prefill(config: FlamingoConfig, params, images, prompt_ids, attention_mask, max_new: int):
    """Encode the media and run the prompt through the LM.

    -> (visual [B, M, n, d], last-token logits [B, V], cache with Lp + max_new slots).
    """
    model = Flamingo(config)
    visual = model.apply({"params": params}, images, method=Flamingo.encode_media)
    b, lp = prompt_ids.shape
    cache = cache_for(config, b, lp + max_new)
    logits, cache = model.apply({"params": params}, visual, prompt_ids, attention_mask=attention_mask,
                                cache=cache, method=Flamingo.decode)
    return visual, logits[:, -1], cache


def _step(config: FlamingoConfig, params, visual, tokens, cache):
    """One decoding step: tokens [B] -> (logits [B, V], cache)."""
    logits, cache = Flamingo(config).apply({"params": params}, visual, tokens[:, None], cache=cache,
                                           method=Flamingo.decode)
    return logits[:, 0], cache


_STATIC = {"_greedy": (0, 4), "_beam": (0, 4, 6, 7), "_score": (0,)}


@functools.lru_cache(maxsize=None)
def _jitted(name: str, options: tuple = ()):
    """The jitted entry point `name`, compiled with XLA `options` (e.g. a lower optimisation
    level where compile time dominates, as for tiny models on CPU)."""
    return jax.jit(globals()[name], static_argnums=_STATIC[name], compiler_options=dict(options) or None)


def _options(compiler_options: dict | None) -> tuple:
    return tuple(sorted((compiler_options or {}).items()))


def _mask(prompt_ids, attention_mask):
    return jnp.ones(prompt_ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask, bool)


def _greedy(config, params, images, prompt_ids, max_new, eos_id, attention_mask):
    visual, last, cache = _prefill(config, params, images, prompt_ids, attention_mask, max_new)

    def body(carry, _):
        last, cache, done = carry
        tok = jnp.where(done, eos_id, jnp.argmax(last, -1).astype(jnp.int32))
        done = done | (tok == eos_id)
        last, cache = _step(config, params, visual, tok, cache)
        return (last, cache, done), tok

    done = jnp.zeros((prompt_ids.shape[0],), bool)
    _, toks = jax.lax.scan(body, (last, cache, done), None, length=max_new)
    return toks.T  # [B, max_new]


def greedy(model: Flamingo, params, images, prompt_ids, max_new_tokens: int, eos_id: int | None = None, *,
           attention_mask=None, compiler_options: dict | None = None):
    """Greedy decoding. images [B, M, T, H, W, 3], prompt_ids [B, Lp] (left-padded) ->
    generated ids int32 [B, max_new_tokens]; after `eos_id` (default `<|endofchunk|>`) every
    position holds `eos_id`."""
    c = model.config
    eos = c.eoc_token_id if eos_id is None else eos_id
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    fn = _jitted("_greedy", _options(compiler_options))
    return fn(c, nn.unbox(params), jnp.asarray(images), prompt_ids, int(max_new_tokens), jnp.int32(eos),
              _mask(prompt_ids, attention_mask))


def _repeat_batch(tree, k: int):
    """Repeat every batch-leading leaf k times (sample-major: row b*k + j is beam j of sample b)."""
    return jax.tree.map(lambda x: jnp.repeat(x, k, axis=0) if x.ndim else x, tree)


def _beam(config, params, images, prompt_ids, max_new, eos_id, k, length_penalty, attention_mask):
    b = prompt_ids.shape[0]
    visual, last, cache = _prefill(config, params, images, prompt_ids, attention_mask, max_new)
    visual, last, cache = _repeat_batch((visual, last, cache), k)
    v = last.shape[-1]
    scores = jnp.tile(jnp.array([0.0] + [_NEG] * (k - 1), jnp.float32), (b, 1))  # one live beam at start
    seqs = jnp.full((b, k, max_new), eos_id, jnp.int32)
    done = jnp.zeros((b, k), bool)
    lengths = jnp.zeros((b, k), jnp.int32)
    eos_row = jnp.full((v,), _NEG, jnp.float32).at[eos_id].set(0.0)  # a finished beam only extends with eos

    def body(carry, t):
        last, cache, scores, seqs, done, lengths = carry
        logp = jax.nn.log_softmax(last.astype(jnp.float32), -1).reshape(b, k, v)
        logp = jnp.where(done[..., None], eos_row, logp)
        cand = (scores[..., None] + logp).reshape(b, k * v)
        scores, flat = jax.lax.top_k(cand, k)  # [B, K]
        beam, tok = flat // v, (flat % v).astype(jnp.int32)
        gather = lambda x: jnp.take_along_axis(x, beam.reshape(b, k, *([1] * (x.ndim - 2))), axis=1)
        seqs, done, lengths = gather(seqs), gather(done), gather(lengths)
        seqs = seqs.at[:, :, t].set(tok)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | (tok == eos_id)
        rows = (jnp.arange(b)[:, None] * k + beam).reshape(-1)  # source row of each new beam
        cache = jax.tree.map(lambda x: x[rows] if x.ndim else x, cache)
        last, cache = _step(config, params, visual, tok.reshape(-1), cache)
        return (last, cache, scores, seqs, done, lengths), None

    carry = (last, cache, scores, seqs, done, lengths)
    (_, _, scores, seqs, done, lengths), _ = jax.lax.scan(body, carry, jnp.arange(max_new))
    final = scores / jnp.maximum(lengths, 1).astype(jnp.float32) ** length_penalty
    best = jnp.argmax(final, axis=1)
    pick = lambda x: jnp.take_along_axis(x, best.reshape(b, 1, *([1] * (x.ndim - 2))), axis=1)[:, 0]
    return pick(seqs), pick(scores)


def beam_search(model: Flamingo, params, images, prompt_ids, max_new_tokens: int, eos_id: int | None = None, *,
                num_beams: int = 3, length_penalty: float = 0.0, attention_mask=None, return_scores: bool = False,
                compiler_options: dict | None = None):
    """Beam search (paper: 3 beams, stop at `<|endofchunk|>`).

    -> best sequence int32 [B, max_new_tokens] (eos-padded after its eos), and with
    `return_scores` its summed log-probability [B]. Beams are ranked at the end by
    score / length ** length_penalty (0: raw log-likelihood).
    """
    c = model.config
    eos = c.eoc_token_id if eos_id is None else eos_id
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    fn = _jitted("_beam", _options(compiler_options))
    seqs, scores = fn(c, nn.unbox(params), jnp.asarray(images), prompt_ids, int(max_new_tokens), jnp.int32(eos),
                      int(num_beams), float(length_penalty), _mask(prompt_ids, attention_mask))
    return (seqs, scores) if return_scores else seqs


def _score(config, params, images, prompt_ids, attention_mask, cand, cand_mask):
    b = prompt_ids.shape[0]
    n_cand, lc = cand.shape
    visual, last, cache = _prefill(config, params, images, prompt_ids, attention_mask, lc)
    visual, last, cache = _repeat_batch((visual, last, cache), n_cand)
    ids = jnp.tile(cand, (b, 1))  # [B*C, Lc], row b*C + c
    m = jnp.tile(cand_mask, (b, 1))
    logits, _ = Flamingo(config).apply({"params": params}, visual, ids, attention_mask=m, cache=cache,
                                       method=Flamingo.decode)
    # The prompt's last logits predict the first candidate token; each candidate token the next.
    logits = jnp.concatenate([last[:, None], logits[:, :-1]], axis=1)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    tok_lp = jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0]
    return (tok_lp * m).sum(-1).reshape(b, n_cand)


def score(model: Flamingo, params, images, prompt_ids, candidates: Sequence[Sequence[int]], *,
          attention_mask=None, compiler_options: dict | None = None):
    """Log-likelihood of each candidate continuation given images and prompt (close-ended tasks).

    images [B, M, T, H, W, 3], prompt_ids [B, Lp] (left-padded), candidates: C token-id lists
    shared by every sample -> float32 [B, C], the summed log-probabilities of the candidate tokens.
    """
    if not candidates or any(len(cnd) == 0 for cnd in candidates):
        raise ValueError("candidates must be non-empty token-id lists")
    lc = max(len(cnd) for cnd in candidates)
    cand = np.zeros((len(candidates), lc), np.int32)
    cmask = np.zeros((len(candidates), lc), bool)
    for i, cnd in enumerate(candidates):
        cand[i, :len(cnd)] = cnd
        cmask[i, :len(cnd)] = True
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    fn = _jitted("_score", _options(compiler_options))
    return fn(model.config, nn.unbox(params), jnp.asarray(images), prompt_ids, _mask(prompt_ids, attention_mask),
              jnp.asarray(cand), jnp.asarray(cmask))
