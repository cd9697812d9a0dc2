"""Frozen vision encoders, keyed by `VisionConfig.kind`.

`clip_vit`: the CLIP ViT (OpenAI / OpenCLIP / Hugging Face `CLIPVisionModel` layout): patch
embedding, class token, learned positions, pre-LayerNorm, pre-norm transformer, final LayerNorm.
An NFNet-F6 (the paper's encoder) slots in by registering a module with the same contract:
`__call__(images [N, H, W, 3]) -> features [N, P, d_model]`.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from model.configs import VisionConfig
from model.layers import LayerNorm, Mlp, attention, dense, dtype_of, init


# The normalisation CLIP (OpenAI and OpenCLIP ViT-L/14) was trained with, per RGB channel.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_images(pixels, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """uint8 RGB pixels [..., H, W, 3] (0–255) -> float32 normalised as the encoder expects."""
    x = np.asarray(pixels, np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


class ClipEncoderLayer(nn.Module):
    cfg: VisionConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # [N, P, d]
        c = self.cfg
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        hd = c.d_model // c.n_heads
        h = LayerNorm(c.norm_eps, name="ln_1", **kw)(x)
        q = dense((c.n_heads, hd), ("embed", "heads", "kv"), use_bias=True, name="q", **kw)(h)
        k = dense((c.n_heads, hd), ("embed", "heads", "kv"), use_bias=True, name="k", **kw)(h)
        v = dense((c.n_heads, hd), ("embed", "heads", "kv"), use_bias=True, name="v", **kw)(h)
        o = attention(q, k, v, jnp.ones((1, 1, 1, 1), bool), self.dtype)  # no mask: all patches see all
        x = x + dense(c.d_model, ("heads", "kv", "embed"), axis=(-2, -1), use_bias=True, name="o",
                      bias_axes=("embed",), **kw)(o)
        h = LayerNorm(c.norm_eps, name="ln_2", **kw)(x)
        return x + Mlp(c.d_model, c.mlp_dim, c.act, name="mlp", **kw)(h)


class ClipVisionTransformer(nn.Module):
    """images [N, H, W, 3] (normalised by the caller) -> features [N, n_tokens, d_model]."""

    cfg: VisionConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        c = self.cfg
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        # A conv with stride = kernel = patch is a dense layer over flattened (py, px, rgb) patches.
        self.patch_embed = dense(c.d_model, ("patch", "embed"), use_bias=False, name="patch_embed", **kw)
        self.cls = self.param("cls", init(("embed",)), (c.d_model,), self.param_dtype)
        self.pos_embed = self.param("pos_embed", init(("positions", "embed")), (c.n_patches + 1, c.d_model),
                                    self.param_dtype)
        self.ln_pre = LayerNorm(c.norm_eps, **kw)
        self.layers = [ClipEncoderLayer(c, name=f"layers_{i}", **kw) for i in range(c.n_layers)]
        self.ln_post = LayerNorm(c.norm_eps, **kw)

    def hidden_states(self, images):
        """All tokens (class token first) after the last layer, before `ln_post`: [N, 1 + P, d].

        Equals Hugging Face `CLIPVisionModel(...).last_hidden_state`.
        """
        c = self.cfg
        n, hgt, wid, ch = images.shape
        p = c.patch_size
        assert hgt == wid == c.image_size, f"images must be {c.image_size}px square, got {hgt}x{wid}"
        x = images.astype(self.dtype).reshape(n, hgt // p, p, wid // p, p, ch)
        x = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, (hgt // p) * (wid // p), p * p * ch)  # [N, P, p*p*3]
        x = self.patch_embed(x)  # [N, P, d]
        cls = jnp.broadcast_to(self.cls.astype(self.dtype), (n, 1, c.d_model))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed.astype(self.dtype)
        x = self.ln_pre(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def pooled(self, images):
        """`ln_post` of the class token: [N, d] (HF `pooler_output`; OpenCLIP before `proj`)."""
        return self.ln_post(self.hidden_states(images)[:, 0])

    def __call__(self, images):
        x = self.hidden_states(images)
        if self.cfg.post_norm:
            x = self.ln_post(x)
        return x if self.cfg.keep_cls else x[:, 1:]


VISION_ENCODERS: dict[str, type[nn.Module]] = {"clip_vit": ClipVisionTransformer}


def build_vision_encoder(cfg: VisionConfig, dtype: str = "float32", param_dtype: str = "float32",
                         name: str | None = None) -> nn.Module:
    """The registered encoder for `cfg.kind`."""
    try:
        cls = VISION_ENCODERS[cfg.kind]
    except KeyError:
        raise ValueError(f"no vision encoder {cfg.kind!r}; registered: {', '.join(VISION_ENCODERS)}") from None
    return cls(cfg, dtype=dtype_of(dtype), param_dtype=dtype_of(param_dtype), name=name)
