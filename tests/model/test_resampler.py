"""Perceiver Resampler: fixed visual-token count, temporal embeddings, no spatial positions."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.configs import ResamplerConfig, get_config
from model.layers import random_init
from model.resampler import PerceiverResampler

FAST = {"xla_backend_optimization_level": 0}
CFG = get_config("tiny").resampler


@functools.lru_cache(maxsize=None)
def run(cfg: ResamplerConfig):
    m = PerceiverResampler(cfg)
    return jax.jit(lambda p, x: m.apply({"params": p}, x), compiler_options=FAST)


@functools.lru_cache(maxsize=None)
def params(cfg: ResamplerConfig, d_in: int):
    # Weights wider than the 0.02 init, so attention is far from uniform and order effects show.
    return random_init(PerceiverResampler(cfg), jax.ShapeDtypeStruct((1, 1, 1, 4, d_in), jnp.float32), std=0.3)


def features(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_any_number_of_features_becomes_n_latents_tokens():
    p = params(CFG, CFG.d_model)
    for frames, patches in ((1, 16), (3, 5)):
        out = run(CFG)(p, features((2, 3, frames, patches, CFG.d_model)))
        assert out.shape == (2, 3, CFG.n_latents, CFG.d_model)
        assert np.isfinite(np.asarray(out)).all()


def test_permuting_frames_changes_the_output():
    """Frames carry learned temporal embeddings, so their order matters."""
    p = params(CFG, CFG.d_model)
    x = features((1, 2, 3, 16, CFG.d_model))
    a = run(CFG)(p, x)
    b = run(CFG)(p, x[:, :, ::-1])
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 0.05
    # ...but each media is resampled on its own: media 1 is untouched by media 0's frames.
    c = run(CFG)(p, x.at[:, 0].set(x[:, 0, ::-1]))
    np.testing.assert_allclose(np.asarray(c[:, 1]), np.asarray(a[:, 1]), atol=1e-6)


def test_permuting_patches_within_a_frame_does_not():
    """No spatial position embeddings (they did not help in the paper): attention over a frame's
    patches is order-free."""
    p = params(CFG, CFG.d_model)
    x = features((1, 2, 3, 16, CFG.d_model))
    perm = np.random.default_rng(1).permutation(16)
    a = run(CFG)(p, x)
    b = run(CFG)(p, x[:, :, :, perm])
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_wider_resampler_projects_encoder_features():
    cfg = ResamplerConfig(d_model=48, n_layers=1, n_heads=2, head_dim=24, n_latents=4, max_frames=2)
    p = params(cfg, 32)
    assert p["proj_in"]["kernel"].value.shape == (32, 48)
    assert run(cfg)(p, features((1, 1, 2, 16, 32))).shape == (1, 1, 4, 48)


def test_more_frames_than_temporal_embeddings_is_refused():
    p = params(CFG, CFG.d_model)
    with pytest.raises(AssertionError, match="temporal embeddings for at most 4"):
        run(CFG)(p, features((1, 1, CFG.max_frames + 1, 4, CFG.d_model)))
