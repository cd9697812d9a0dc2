"""Decoder-only language model in two layouts, with optional GATED XATTN-DENSE blocks.

- "gpt2": learned positions, LayerNorm, GELU MLP, biases, output head tied to the embeddings.
- "llama": rotary positions, RMSNorm, SwiGLU MLP, grouped-query attention, no biases.

Parameter names are ours (see docs/MODEL.md); model/weights.py maps Hugging Face checkpoints
onto them. With a FlamingoConfig, a cross-attention block `xattn_{i}` runs before LM layer i
for i in `FlamingoConfig.xattn_layers`, and the special tokens (`<image>`,
`<|endofchunk|>`) get their own trainable embedding rows (`new_token_embed`) outside the frozen
table; their logits are appended to (or overwrite) the frozen vocabulary's.

KV cache (for decoding), a dict:
  index        int32 []        slots already written (same for the whole batch)
  valid        bool  [B, S]    which slots hold real (non-padding) tokens
  pos          int32 [B]       position of the next real token
  media_count  int32 [B]       `<image>` tokens seen so far (text_time offset)
  layers       {layers_i: {k, v: [B, S, Hk, D]}}
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.configs import FlamingoConfig, LMConfig
from model.layers import LayerNorm, Mlp, RMSNorm, attention, dense, dtype_of, init, rope, rope_frequencies
from model.xattn import GatedCrossAttentionDense


def init_cache(cfg: LMConfig, batch: int, max_len: int, dtype="float32") -> dict:
    """An empty KV cache with `max_len` slots."""
    shape = (batch, max_len, cfg.kv_heads, cfg.hd)
    dt = dtype_of(dtype) if isinstance(dtype, str) else dtype
    return {
        "index": jnp.zeros((), jnp.int32),
        "valid": jnp.zeros((batch, max_len), bool),
        "pos": jnp.zeros((batch,), jnp.int32),
        "media_count": jnp.zeros((batch,), jnp.int32),
        "layers": {f"layers_{i}": {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}
                   for i in range(cfg.n_layers)},
    }


class DecoderLayer(nn.Module):
    cfg: LMConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, positions, mask, kv=None, index=None):
        """x [B, L, d]; positions [B, L]; mask bool [B, 1, L, S]; kv: this layer's cache or None.

        Returns (x, new_kv). With a cache, keys/values of this call are written at slots
        [index, index + L) and attention runs over all S slots (mask decides).
        """
        c = self.cfg
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        llama = c.layout == "llama"
        norm = (lambda name: RMSNorm(c.norm_eps, name=name, **kw)) if llama else (
            lambda name: LayerNorm(c.norm_eps, name=name, **kw))
        h = norm("attn_norm")(x)
        q = dense((c.n_heads, c.hd), ("embed", "heads", "kv"), use_bias=c.attn_bias, name="q", **kw)(h)
        k = dense((c.kv_heads, c.hd), ("embed", "kv_heads", "kv"), use_bias=c.attn_bias, name="k", **kw)(h)
        v = dense((c.kv_heads, c.hd), ("embed", "kv_heads", "kv"), use_bias=c.attn_bias, name="v", **kw)(h)
        if llama:
            inv = rope_frequencies(c.hd, c.rope_theta, c.rope_type, c.rope_factor, c.rope_low_freq_factor,
                                   c.rope_high_freq_factor, c.rope_original_max_len)
            q, k = rope(q, positions, inv), rope(k, positions, inv)
        new_kv = None
        if kv is not None:
            k = jax.lax.dynamic_update_slice_in_dim(kv["k"], k.astype(kv["k"].dtype), index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(kv["v"], v.astype(kv["v"].dtype), index, axis=1)
            new_kv = {"k": k, "v": v}
        o = attention(q, k, v, mask, self.dtype)
        x = x + dense(c.d_model, ("heads", "kv", "embed"), axis=(-2, -1), use_bias=c.o_bias, name="o", **kw)(o)
        h = norm("mlp_norm")(x)
        x = x + Mlp(c.d_model, c.mlp_dim, c.act, gated=llama, use_bias=c.mlp_bias, name="mlp", **kw)(h)
        return x, new_kv


class LanguageModel(nn.Module):
    """input_ids [B, L] -> (logits [B, L, V] float32, new cache or None).

    flamingo: None for the bare LM; else cross-attention blocks and special-token rows are added
    and `visual` [B, M, n, d_vis] must be given.
    """

    cfg: LMConfig
    flamingo: FlamingoConfig | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    remat: bool = False

    def setup(self):
        c, f = self.cfg, self.flamingo
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embed = self.param("embed", init(("vocab", "embed")), (c.vocab_size, c.d_model), self.param_dtype)
        if c.layout == "gpt2":
            self.pos_embed = self.param("pos_embed", init(("positions", "embed")), (c.max_len, c.d_model),
                                        self.param_dtype)
            self.final_norm = LayerNorm(c.norm_eps, **kw)
        elif c.layout == "llama":
            self.final_norm = RMSNorm(c.norm_eps, **kw)
        else:
            raise ValueError(f"unknown LM layout {c.layout!r}; use 'gpt2' or 'llama'")
        if not c.tie_embeddings:
            self.head = self.param("head", init(("embed", "vocab")), (c.d_model, c.vocab_size), self.param_dtype)
        layer_cls = nn.remat(DecoderLayer) if self.remat else DecoderLayer
        self.layers = [layer_cls(c, name=f"layers_{i}", **kw) for i in range(c.n_layers)]
        self.xattn = {}
        if f is not None:
            n_new = len(f.special_token_ids)
            self.new_token_embed = self.param("new_token_embed", init((None, "embed")), (n_new, c.d_model),
                                              self.param_dtype)
            if not c.tie_embeddings:
                self.new_token_head = self.param("new_token_head", init((None, "embed")), (n_new, c.d_model),
                                                 self.param_dtype)
            x_cls = nn.remat(GatedCrossAttentionDense) if self.remat else GatedCrossAttentionDense
            self.xattn = {str(i): x_cls(c.d_model, f.xattn_heads, f.xattn_head_dim, f.xattn_ffw_mult, f.xattn_act,
                                        f.only_immediate, name=f"xattn_{i}", **kw) for i in f.xattn_layers}

    def embed_tokens(self, ids):  # [B, L] -> [B, L, d]
        x = jnp.take(self.embed, jnp.clip(ids, 0, self.cfg.vocab_size - 1), axis=0)
        if self.flamingo is not None:
            for j, tid in enumerate(self.flamingo.special_token_ids):
                x = jnp.where((ids == tid)[..., None], self.new_token_embed[j], x)
        return x.astype(self.dtype)

    def logits(self, h):  # [B, L, d] -> [B, L, V] float32
        c, f = self.cfg, self.flamingo
        h = h.astype(self.dtype)
        if c.tie_embeddings:
            out = jnp.einsum("bld,vd->blv", h, self.embed.astype(self.dtype), preferred_element_type=jnp.float32)
        else:
            out = jnp.einsum("bld,dv->blv", h, self.head.astype(self.dtype), preferred_element_type=jnp.float32)
        if f is None:
            return out
        rows = self.new_token_embed if c.tie_embeddings else self.new_token_head
        new = jnp.einsum("bld,nd->bln", h, rows.astype(self.dtype), preferred_element_type=jnp.float32)
        if f.vocab_size > c.vocab_size:  # ids never assigned to any token get -inf-like logits
            out = jnp.pad(out, ((0, 0), (0, 0), (0, f.vocab_size - c.vocab_size)), constant_values=-1e9)
        return out.at[..., jnp.array(f.special_token_ids)].set(new)

    def __call__(self, input_ids, *, visual=None, attention_mask=None, cache=None):
        b, l = input_ids.shape
        f = self.flamingo
        tok_valid = jnp.ones((b, l), bool) if attention_mask is None else attention_mask.astype(bool)
        # Positions count real tokens only, so left-padded prompts get the positions unpadded ones would.
        offset = jnp.zeros((b,), jnp.int32) if cache is None else cache["pos"]
        positions = jnp.maximum(offset[:, None] + jnp.cumsum(tok_valid, axis=1) - 1, 0).astype(jnp.int32)
        if cache is None:
            idx = jnp.arange(l)
            mask = (idx[None, :] <= idx[:, None])[None, None] & tok_valid[:, None, None, :]  # [B, 1, L, L]
            index = None
        else:
            index = cache["index"]
            valid = jax.lax.dynamic_update_slice_in_dim(cache["valid"], tok_valid, index, axis=1)  # [B, S]
            slots = jnp.arange(valid.shape[1])
            causal = slots[None, :] <= (index + jnp.arange(l))[:, None]  # [L, S]
            mask = causal[None, None] & valid[:, None, None, :]
        x = self.embed_tokens(input_ids)
        if self.cfg.layout == "gpt2":
            x = x + jnp.take(self.pos_embed, positions, axis=0).astype(self.dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        text_time = None
        if f is not None:
            assert visual is not None, "a Flamingo LM needs visual tokens [B, M, n, d]"
            media_before = jnp.zeros((b,), jnp.int32) if cache is None else cache["media_count"]
            is_media = (input_ids == f.media_token_id) & tok_valid
            text_time = media_before[:, None] + jnp.cumsum(is_media, axis=1).astype(jnp.int32)

        new_layers = {}
        for i, layer in enumerate(self.layers):
            if str(i) in self.xattn:
                x = self.xattn[str(i)](x, visual, text_time)
            kv = None if cache is None else cache["layers"][f"layers_{i}"]
            x, new_kv = layer(x, positions, mask, kv, index)
            x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
            new_layers[f"layers_{i}"] = new_kv
        logits = self.logits(self.final_norm(x))

        new_cache = None
        if cache is not None:
            new_cache = {
                "index": index + l,
                "valid": valid,
                "pos": offset + tok_valid.sum(axis=1).astype(jnp.int32),
                "media_count": text_time[:, -1] if text_time is not None else cache["media_count"],
                "layers": new_layers,
            }
        return logits, new_cache


def build_lm(cfg: LMConfig, flamingo: FlamingoConfig | None = None, dtype: str = "float32",
             param_dtype: str = "float32", remat: bool = False, name: str | None = None) -> LanguageModel:
    return LanguageModel(cfg, flamingo, dtype=dtype_of(dtype), param_dtype=dtype_of(param_dtype), remat=remat,
                         name=name)
