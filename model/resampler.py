"""Perceiver Resampler: a variable number of visual features -> a fixed number of visual tokens.

Follows the paper (Alayrac et al. 2022, §2.1 and Fig. 5) and OpenFlamingo: learned latents
(queries); keys and values from concat(visual features, latents); LayerNorm on the media and on
the latents before each attention; learned temporal embeddings added per frame (no spatial
position embeddings — they did not help); a final LayerNorm.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from model.configs import ResamplerConfig
from model.layers import LayerNorm, Mlp, attention, dense, dtype_of, init


class PerceiverAttention(nn.Module):
    cfg: ResamplerConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, latents):  # x: [N, S, d], latents: [N, n, d] -> [N, n, d]
        c = self.cfg
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = LayerNorm(c.norm_eps, name="norm_media", **kw)(x)
        latents = LayerNorm(c.norm_eps, name="norm_latents", **kw)(latents)
        kv_in = jnp.concatenate([x, latents], axis=1)  # [N, S + n, d]
        proj = lambda name: dense((c.n_heads, c.head_dim), ("embed", "heads", "kv"), use_bias=False,
                                  name=name, **kw)
        q, k, v = proj("q")(latents), proj("k")(kv_in), proj("v")(kv_in)
        o = attention(q, k, v, jnp.ones((1, 1, 1, 1), bool), self.dtype)
        return dense(c.d_model, ("heads", "kv", "embed"), axis=(-2, -1), use_bias=False, name="o", **kw)(o)


class PerceiverResampler(nn.Module):
    """features [B, M, T, P, d_in] -> visual tokens [B, M, n_latents, d_model]."""

    cfg: ResamplerConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, m, t, p, d_in = x.shape
        assert t <= c.max_frames, f"{t} frames but temporal embeddings for at most {c.max_frames}"
        x = x.astype(self.dtype)
        if d_in != c.d_model:  # the paper's resampler is wider (1536) than CLIP's features (1024)
            x = dense(c.d_model, ("vision_embed", "embed"), use_bias=False, name="proj_in", **kw)(x)
        frame_embed = self.param("frame_embed", init(("frames", "embed"), 1.0), (c.max_frames, c.d_model),
                                 self.param_dtype)  # unit-variance init as OpenFlamingo
        x = x + frame_embed[:t].astype(self.dtype)[None, None, :, None, :]
        x = x.reshape(b * m, t * p, c.d_model)  # frames flattened into one sequence per media
        latents = self.param("latents", init(("latents", "embed"), 1.0), (c.n_latents, c.d_model),
                             self.param_dtype)
        lat = jnp.broadcast_to(latents.astype(self.dtype), (b * m, c.n_latents, c.d_model))
        for i in range(c.n_layers):
            lat = lat + PerceiverAttention(c, name=f"attn_{i}", **kw)(x, lat)
            h = LayerNorm(c.norm_eps, name=f"ffw_norm_{i}", **kw)(lat)
            lat = lat + Mlp(c.d_model, c.ffw_mult * c.d_model, c.act, use_bias=False, name=f"ffw_{i}", **kw)(h)
        lat = LayerNorm(c.norm_eps, name="norm", **kw)(lat)
        return lat.reshape(b, m, c.n_latents, c.d_model)


def build_resampler(cfg: ResamplerConfig, dtype: str = "float32", param_dtype: str = "float32",
                    name: str | None = None) -> PerceiverResampler:
    return PerceiverResampler(cfg, dtype=dtype_of(dtype), param_dtype=dtype_of(param_dtype), name=name)
