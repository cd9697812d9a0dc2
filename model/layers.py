"""Building blocks shared by the vision encoder, resampler, LM and cross-attention.

Every parameter is created with logical axis names (`nn.with_logical_partitioning`); the
trainer maps the names to mesh axes. Names used: "vocab", "embed", "mlp", "heads", "kv_heads",
"kv", "norm", "latents", "patch", "frames", "positions".
"""
from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -1e30  # finite, so fully masked rows give a uniform softmax, never NaN
INIT_STD = 0.02


def dtype_of(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def init(axes: tuple, std: float = INIT_STD) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def zeros(axes: tuple) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def ones(axes: tuple) -> Callable:
    return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def sqrelu(x):
    return jnp.square(jax.nn.relu(x))


ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch nn.GELU / HF "gelu"
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # GPT-2's tanh approximation
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "sqrelu": sqrelu,  # the paper's resampler and cross-attention feed-forwards
}


def activation(name: str) -> Callable:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}") from None


class LayerNorm(nn.Module):
    """LayerNorm computed in fp32 (two-pass variance, as torch does); params "scale", "bias"."""

    eps: float = 1e-5
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", ones(("norm",)), (d,), self.param_dtype)
        h = x.astype(jnp.float32)
        mean = h.mean(-1, keepdims=True)
        var = jnp.square(h - mean).mean(-1, keepdims=True)
        h = (h - mean) * jax.lax.rsqrt(var + self.eps) * scale.astype(jnp.float32)
        if self.use_bias:
            h = h + self.param("bias", zeros(("norm",)), (d,), self.param_dtype).astype(jnp.float32)
        return h.astype(self.dtype)


class RMSNorm(nn.Module):
    """Llama's RMSNorm: normalise in fp32, cast back, then scale (the order HF uses)."""

    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", ones(("norm",)), (x.shape[-1],), self.param_dtype)
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.square(h).mean(-1, keepdims=True) + self.eps)
        return (scale.astype(self.dtype) * h.astype(self.dtype)).astype(self.dtype)


def dense(features, axes: tuple, *, use_bias: bool, dtype, param_dtype, axis=-1, name=None,
          bias_axes: tuple | None = None, std: float = INIT_STD, kernel_init=None) -> nn.DenseGeneral:
    """DenseGeneral with logical axis names on kernel (and bias: the output axes)."""
    n_out = len(features) if isinstance(features, tuple) else 1
    return nn.DenseGeneral(
        features=features,
        axis=axis,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=kernel_init or init(axes, std),
        bias_init=zeros(bias_axes or axes[-n_out:]),
        name=name,
    )


class Mlp(nn.Module):
    """Feed-forward: fc1 → act → fc2, or the gated form down(act(gate(x)) · up(x))."""

    d_model: int
    mlp_dim: int
    act: str
    gated: bool = False
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # [..., d] -> [..., d]
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        f = activation(self.act)
        if self.gated:
            h = f(dense(self.mlp_dim, ("embed", "mlp"), name="gate", **kw)(x))
            h = h * dense(self.mlp_dim, ("embed", "mlp"), name="up", **kw)(x)
        else:
            h = f(dense(self.mlp_dim, ("embed", "mlp"), name="fc1", **kw)(x))
        return dense(self.d_model, ("mlp", "embed"), name="fc2" if not self.gated else "down", **kw)(h)


def attention(q, k, v, mask, dtype=jnp.float32):
    """Scaled dot-product attention with grouped-query support.

    q: [B, L, H, D]; k, v: [B, S, Hk, D] with H % Hk == 0; mask: bool broadcastable to
    [B, H, L, S] (True = may attend). Returns [B, L, H, D]. Softmax in fp32.
    """
    b, l, h, d = q.shape
    hk = k.shape[2]
    g = h // hk
    q = q.reshape(b, l, hk, g, d) * (1.0 / math.sqrt(d))
    s = jnp.einsum("blkgd,bskd->bkgls", q, k, preferred_element_type=jnp.float32)
    mask = jnp.broadcast_to(mask, (b, h, l, k.shape[1])).reshape(b, hk, g, l, k.shape[1])
    s = jnp.where(mask, s, NEG_INF)
    p = jax.nn.softmax(s, axis=-1).astype(dtype)
    o = jnp.einsum("bkgls,bskd->blkgd", p, v.astype(dtype))
    return o.reshape(b, l, h, d)


def rope_frequencies(d: int, theta: float, rope_type: str = "default", factor: float = 1.0,
                     low_freq_factor: float = 1.0, high_freq_factor: float = 4.0, original_max_len: int = 8192):
    """Inverse frequencies [d / 2] of the rotary embedding, with HF's frequency scaling."""
    inv = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    if rope_type == "default":
        pass
    elif rope_type == "linear":  # positions divided by factor
        inv = inv / factor
    elif rope_type == "llama3":  # long wavelengths slowed by factor, short kept, smooth in between
        wavelen = 2 * math.pi / inv
        low_wl, high_wl = original_max_len / low_freq_factor, original_max_len / high_freq_factor
        scaled = np.where(wavelen > low_wl, inv / factor, inv)
        smooth = (original_max_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wl) & (wavelen <= low_wl)
        inv = np.where(medium, smoothed, scaled)
    else:
        raise ValueError(f"RoPE scaling {rope_type!r} is not supported; use default, linear or llama3")
    return jnp.asarray(inv, jnp.float32)


def rope(x, positions, inv_freq):
    """Rotary embedding, HF Llama convention (rotate halves). x: [B, L, H, D]; positions: [B, L];
    inv_freq: [D / 2] from `rope_frequencies`."""
    d = x.shape[-1]
    ang = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, D/2]
    ang = jnp.concatenate([ang, ang], -1)[:, :, None, :]  # [B, L, 1, D]
    cos, sin = jnp.cos(ang), jnp.sin(ang)
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., : d // 2], xf[..., d // 2:]
    rot = jnp.concatenate([-x2, x1], -1)
    return (xf * cos + rot * sin).astype(x.dtype)

UNIT_NORMAL = ("latents", "frame_embed")  # initialised like torch.randn in OpenFlamingo


def random_init(module: nn.Module, *args, seed: int = 0, std: float = INIT_STD) -> dict:
    """`module.init(rng, *args)["params"]` made with numpy instead of a compiled initialiser.

    args may be arrays or `jax.ShapeDtypeStruct`s. Norm scales are 1, biases and gates 0,
    latents and temporal embeddings unit normal, every other weight normal(0, std). Boxes
    (`nn.Partitioned`, logical axis names) are kept.
    """
    shapes = jax.eval_shape(lambda *a: module.init(jax.random.PRNGKey(0), *a), *args)["params"]
    rs = np.random.default_rng(seed)

    def fill(path, leaf):
        box = leaf if isinstance(leaf, nn.Partitioned) else None
        sds = box.value if box is not None else leaf
        last = getattr(path[-1], "key", str(path[-1]))
        if last in ("bias", "attn_gate", "ffw_gate"):
            arr = np.zeros(sds.shape)
        elif last == "scale":
            arr = np.ones(sds.shape)
        elif last in UNIT_NORMAL:
            arr = rs.standard_normal(sds.shape)
        else:
            arr = rs.normal(0.0, std, sds.shape)
        value = jnp.asarray(arr, sds.dtype)
        return box.replace(value=value) if box is not None else value

    return jax.tree_util.tree_map_with_path(fill, shapes, is_leaf=lambda x: isinstance(x, nn.Partitioned))
