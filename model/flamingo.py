"""Flamingo (Alayrac et al. 2022): frozen vision encoder -> Perceiver Resampler -> frozen LM with
GATED XATTN-DENSE blocks.

Shapes:
  images     float [B, M, T, H, W, 3]  M media per sample, T frames (1 for still images),
                                       already normalised by the caller
  input_ids  int32 [B, L]              `<image>` (config.media_token_id) marks each media's place
  logits     float32 [B, L, V]         V = config.vocab_size (LM vocabulary + special tokens)

Parameter tree (top level): vision/…, resampler/…, lm/{embed, layers_i, xattn_i,
new_token_embed, …}. `trainable_mask` says which leaves the optimizer updates.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from model.configs import FlamingoConfig
from model.layers import INIT_STD, dtype_of, random_init
from model.lm import LanguageModel, init_cache
from model.resampler import PerceiverResampler
from model.vision import build_vision_encoder


class Flamingo(nn.Module):
    config: FlamingoConfig

    def setup(self):
        c = self.config
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        self.vision = build_vision_encoder(c.vision, c.dtype, c.param_dtype)
        self.resampler = PerceiverResampler(c.resampler, dtype=dt, param_dtype=pdt)
        self.lm = LanguageModel(c.lm, c, dtype=dt, param_dtype=pdt, remat=c.remat)

    def encode_media(self, images):
        """images [B, M, T, H, W, 3] -> visual tokens [B, M, n_latents, d_resampler]."""
        b, m, t, h, w, ch = images.shape
        feats = self.vision(images.reshape(b * m * t, h, w, ch))  # [B*M*T, P, d_vision]
        if self.config.freeze_vision:
            feats = jax.lax.stop_gradient(feats)
        feats = feats.reshape(b, m, t, *feats.shape[1:])  # [B, M, T, P, d_vision]
        return self.resampler(feats)

    def decode(self, visual, input_ids, *, attention_mask=None, cache=None, deterministic=True):
        """The LM conditioned on precomputed visual tokens (cached decoding reuses them).

        visual [B, M, n, d], input_ids [B, L] -> (logits [B, L, V] float32, new cache or None).
        With a cache (`model.lm.init_cache` / `Flamingo.init_cache`), input_ids continue the
        cached sequence: positions, `<image>` counting and the causal mask carry over.
        """
        del deterministic  # no dropout: the LM is frozen and OpenFlamingo trains without it
        return self.lm(input_ids, visual=visual, attention_mask=attention_mask, cache=cache)

    def __call__(self, images, input_ids, *, attention_mask=None, deterministic=True):
        """images [B, M, T, H, W, 3], input_ids [B, L] -> logits [B, L, V] float32."""
        visual = self.encode_media(images)
        return self.decode(visual, input_ids, attention_mask=attention_mask, deterministic=deterministic)[0]


def init_params(config: FlamingoConfig, rng=None, batch: int = 1, n_media: int = 1, frames: int = 1,
                length: int = 8) -> dict:
    """Randomly initialised (boxed, with logical axis names) parameters: `variables["params"]`."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    v = config.vision
    images = jnp.zeros((batch, n_media, frames, v.image_size, v.image_size, 3), jnp.float32)
    ids = jnp.zeros((batch, length), jnp.int32)
    return Flamingo(config).init(rng, images, ids)["params"]


def cache_for(config: FlamingoConfig, batch: int, max_len: int) -> dict:
    """An empty KV cache for `Flamingo.decode` with `max_len` slots."""
    return init_cache(config.lm, batch, max_len, config.dtype)


TRAINABLE_NAMES = ("new_token_embed", "new_token_head")  # the special tokens' rows inside lm/


def is_trainable(path: tuple[str, ...], train_lm: bool = False, train_vision: bool = False) -> bool:
    """Whether the parameter at `path` (a tuple of names from the params root) is trained."""
    if path and path[0] == "resampler":
        return True
    if any(p.startswith("xattn_") for p in path) or any(p in TRAINABLE_NAMES for p in path):
        return True
    if path and path[0] == "lm":
        return train_lm
    if path and path[0] == "vision":
        return train_vision
    return False


def trainable_mask(params, *, train_lm: bool = False, train_vision: bool = False):
    """A pytree of bools shaped like `params`: True for the resampler, every GATED XATTN-DENSE
    block (gates included) and the special tokens' embedding rows; False for the frozen vision
    encoder and LM (`train_lm=True` trains the LM too, e.g. for a tiny model from scratch).

    Works on boxed (`nn.Partitioned`) and plain parameter trees alike.
    """
    def leaf_mask(path, _):
        names = tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)
        return is_trainable(names, train_lm, train_vision)

    is_box = lambda x: isinstance(x, nn.Partitioned)
    return jax.tree_util.tree_map_with_path(leaf_mask, params, is_leaf=is_box)


def flat_names(params) -> dict[str, object]:
    """{'lm/layers_0/q/kernel': leaf, …} for inspection and docs."""
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(nn.unbox(params)).items()}



def random_params(config: FlamingoConfig, seed: int = 0, *, std: float = INIT_STD, batch: int = 1, n_media: int = 1,
                  frames: int = 1, length: int = 8) -> dict:
    """Random parameters made on the host with numpy: the same tree (and logical axis names) as
    `init_params`, without compiling an initialiser — for tests, demos and quick experiments.
    See `model.layers.random_init` for the distributions.
    """
    v = config.vision
    images = jax.ShapeDtypeStruct((batch, n_media, frames, v.image_size, v.image_size, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    return random_init(Flamingo(config), images, ids, seed=seed, std=std)
