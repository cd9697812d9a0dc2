"""GATED XATTN-DENSE: text tokens cross-attend to visual tokens, gated by tanh(α), α₀ = 0.

Block (paper Fig. 4, OpenFlamingo): y = x + tanh(α_attn) · XAttn(LN(x), media);
y = y + tanh(α_ffw) · FFW(LN(y)). At initialisation both gates are 0, so the frozen LM's
output is unchanged.

Masking (paper §2.3, REFERENCE §4): text_time = cumsum(input_ids == <image>) numbers each
token with the last image at or before it (1-based; 0 = before any image). A token attends to
the visual tokens of media m (1-based) iff m == text_time (immediate, the default) or
1 <= m <= text_time (all previous). Tokens that see no media get exactly zero output.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from model.layers import LayerNorm, Mlp, attention, dense


def media_mask(text_time, n_media: int, n_latents: int, only_immediate: bool):
    """text_time [B, L] int -> (mask [B, 1, L, M * n_latents] bool, has_media [B, L] bool)."""
    media_time = jnp.arange(1, n_media + 1)  # [M]
    tt = text_time[:, :, None]
    allowed = (tt == media_time) if only_immediate else (media_time <= tt)  # [B, L, M]
    has_media = allowed.any(-1)
    allowed = jnp.repeat(allowed, n_latents, axis=-1)  # [B, L, M * n]
    return allowed[:, None], has_media


class GatedCrossAttentionDense(nn.Module):
    """x [B, L, d_text], media [B, M, n, d_vis], text_time [B, L] -> [B, L, d_text]."""

    d_model: int
    n_heads: int
    head_dim: int
    ffw_mult: int
    act: str
    only_immediate: bool = True
    norm_eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, media, text_time):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, m, n, dv = media.shape
        mask, has_media = media_mask(text_time, m, n, self.only_immediate)
        media = media.reshape(b, m * n, dv).astype(self.dtype)
        h = LayerNorm(self.norm_eps, name="norm", **kw)(x)  # LayerNorm on text only
        q = dense((self.n_heads, self.head_dim), ("embed", "heads", "kv"), use_bias=False, name="q", **kw)(h)
        k = dense((self.n_heads, self.head_dim), ("vision_embed", "heads", "kv"), use_bias=False,
                  name="k", **kw)(media)
        v = dense((self.n_heads, self.head_dim), ("vision_embed", "heads", "kv"), use_bias=False,
                  name="v", **kw)(media)
        o = attention(q, k, v, mask, self.dtype)  # [B, L, H, D]
        o = o * has_media[:, :, None, None].astype(o.dtype)  # no image yet: zero, not a uniform average
        o = dense(self.d_model, ("heads", "kv", "embed"), axis=(-2, -1), use_bias=False, name="o", **kw)(o)
        self.sow("intermediates", "xattn_out", o)  # ungated output, for inspection and tests
        attn_gate = self.param("attn_gate", nn.with_logical_partitioning(nn.initializers.zeros_init(), ()),
                               (), self.param_dtype)
        ffw_gate = self.param("ffw_gate", nn.with_logical_partitioning(nn.initializers.zeros_init(), ()),
                              (), self.param_dtype)
        x = x + jnp.tanh(attn_gate).astype(self.dtype) * o
        h = LayerNorm(self.norm_eps, name="ffw_norm", **kw)(x)
        f = Mlp(self.d_model, self.ffw_mult * self.d_model, self.act, use_bias=False, name="ffw", **kw)(h)
        return x + jnp.tanh(ffw_gate).astype(self.dtype) * f
