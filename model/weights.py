"""Load pretrained weights from local checkpoints into our parameter trees. Never downloads.

- Language models: a Hugging Face directory (config.json + model.safetensors, or sharded with
  model.safetensors.index.json) of a GPT-2 or a Llama-family model (`model_type` "gpt2",
  "llama", "mistral", "qwen2").
- Vision: a Hugging Face CLIP directory (`CLIPVisionModel` or full `CLIPModel`; config.json +
  safetensors), or an OpenCLIP checkpoint (a .safetensors file or a directory holding one, keys
  `visual.*`; the config is read off the tensor shapes).

Each loader returns (our config dataclass, a nested dict of float32 numpy arrays) shaped like the
`lm` or `vision` subtree of `Flamingo`'s params; `merge_pretrained` writes them into an
initialised (boxed) tree, checking every shape.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
from flax import traverse_util

from model.configs import LMConfig, VisionConfig

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as float32 numpy arrays (bf16 included), memory-mapped."""
    path = Path(path)
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        arr = data[start:end].view(_DTYPES[meta["dtype"]]).reshape(meta["shape"])
        out[name] = arr.astype(np.float32) if arr.dtype.kind == "f" or arr.dtype == ml_dtypes.bfloat16 else arr
    return out


def read_checkpoint_dir(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face checkpoint directory (single file or index-sharded)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {path}; save the model with safe_serialization=True")
    tensors = {}
    for f in files:
        tensors.update(read_safetensors(path / f))
    return tensors


def _strip(tensors: dict, prefixes: tuple[str, ...]) -> dict:
    out = {}
    for k, v in tensors.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# Language models
# ---------------------------------------------------------------------------------------------

def lm_config_from_hf(hf: dict) -> LMConfig:
    """Our LMConfig from a Hugging Face config.json dict."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        d = hf["n_embd"]
        return LMConfig(
            layout="gpt2", vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"], n_heads=hf["n_head"],
            n_kv_heads=hf["n_head"], mlp_dim=hf.get("n_inner") or 4 * d, max_len=hf["n_positions"],
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), act=hf.get("activation_function", "gelu_new"),
            tie_embeddings=hf.get("tie_word_embeddings", True), attn_bias=True, mlp_bias=True,
        )
    if kind in ("llama", "mistral", "qwen2"):
        # transformers 5 keeps RoPE settings in "rope_parameters"; 4.x in "rope_scaling" + "rope_theta".
        rope = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
        rope_type = rope.get("rope_type") or rope.get("type") or "default"
        if rope_type not in ("default", "linear", "llama3"):
            raise ValueError(f"RoPE scaling {rope_type!r} is not supported; use default, linear or llama3")
        if hf.get("use_sliding_window"):  # (Mistral's window only matters past its length: not checked)
            raise ValueError("sliding-window attention is not supported; only full causal attention")
        qwen = kind == "qwen2"  # biases on q, k, v and none on the output projection
        return LMConfig(
            layout="llama", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"), mlp_dim=hf["intermediate_size"],
            max_len=hf.get("max_position_embeddings", 2048),
            rope_theta=float(rope.get("rope_theta") or hf.get("rope_theta") or 10000.0),
            rope_type=rope_type, rope_factor=float(rope.get("factor", 1.0)),
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_len=int(rope.get("original_max_position_embeddings", 8192)),
            norm_eps=hf.get("rms_norm_eps", 1e-6), act=hf.get("hidden_act", "silu"),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            attn_bias=True if qwen else bool(hf.get("attention_bias", False)),
            attn_out_bias=False if qwen else None, mlp_bias=bool(hf.get("mlp_bias", False)),
        )
    raise ValueError(f"unsupported LM model_type {kind!r}; supported: gpt2, llama, mistral, qwen2")


def _gpt2_params(cfg: LMConfig, t: dict) -> dict:
    t = _strip(t, ("transformer.",))
    d, h, hd = cfg.d_model, cfg.n_heads, cfg.hd
    p = {"embed": t["wte.weight"], "pos_embed": t["wpe.weight"],
         "final_norm": {"scale": t["ln_f.weight"], "bias": t["ln_f.bias"]}}
    if not cfg.tie_embeddings:
        p["head"] = t["lm_head.weight"].T
    for i in range(cfg.n_layers):
        g = lambda n: t[f"h.{i}.{n}"]
        w, b = g("attn.c_attn.weight"), g("attn.c_attn.bias")  # Conv1D: [d, 3d], columns q | k | v
        layer = {"attn_norm": {"scale": g("ln_1.weight"), "bias": g("ln_1.bias")},
                 "mlp_norm": {"scale": g("ln_2.weight"), "bias": g("ln_2.bias")},
                 "o": {"kernel": g("attn.c_proj.weight").reshape(h, hd, d), "bias": g("attn.c_proj.bias")},
                 "mlp": {"fc1": {"kernel": g("mlp.c_fc.weight"), "bias": g("mlp.c_fc.bias")},
                         "fc2": {"kernel": g("mlp.c_proj.weight"), "bias": g("mlp.c_proj.bias")}}}
        for j, n in enumerate("qkv"):
            cols = slice(j * d, (j + 1) * d)
            layer[n] = {"kernel": w[:, cols].reshape(d, h, hd), "bias": b[cols].reshape(h, hd)}
        p[f"layers_{i}"] = layer
    return p


def _llama_params(cfg: LMConfig, t: dict) -> dict:
    t = _strip(t, ("model.",))
    d, hd = cfg.d_model, cfg.hd
    p = {"embed": t["embed_tokens.weight"], "final_norm": {"scale": t["norm.weight"]}}
    if not cfg.tie_embeddings:
        p["head"] = t["lm_head.weight"].T
    for i in range(cfg.n_layers):
        g = lambda n: t[f"layers.{i}.{n}"]
        proj = lambda n, heads: {"kernel": g(f"self_attn.{n}_proj.weight").T.reshape(d, heads, hd)}
        layer = {"attn_norm": {"scale": g("input_layernorm.weight")},
                 "mlp_norm": {"scale": g("post_attention_layernorm.weight")},
                 "q": proj("q", cfg.n_heads), "k": proj("k", cfg.kv_heads), "v": proj("v", cfg.kv_heads),
                 "o": {"kernel": g("self_attn.o_proj.weight").T.reshape(cfg.n_heads, hd, d)},
                 "mlp": {"gate": {"kernel": g("mlp.gate_proj.weight").T}, "up": {"kernel": g("mlp.up_proj.weight").T},
                         "down": {"kernel": g("mlp.down_proj.weight").T}}}
        if cfg.attn_bias:
            for n, heads in (("q", cfg.n_heads), ("k", cfg.kv_heads), ("v", cfg.kv_heads)):
                layer[n]["bias"] = g(f"self_attn.{n}_proj.bias").reshape(heads, hd)
        if cfg.o_bias:
            layer["o"]["bias"] = g("self_attn.o_proj.bias")
        if cfg.mlp_bias:
            for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
                layer["mlp"][ours]["bias"] = g(f"mlp.{theirs}.bias")
        p[f"layers_{i}"] = layer
    return p


def load_lm(path: str | Path) -> tuple[LMConfig, dict]:
    """(LMConfig, params of the `lm` subtree) from a local Hugging Face checkpoint directory."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found: point --lm-checkpoint at a Hugging Face model directory")
    cfg = lm_config_from_hf(json.loads(cfg_file.read_text()))
    tensors = read_checkpoint_dir(path)
    params = _gpt2_params(cfg, tensors) if cfg.layout == "gpt2" else _llama_params(cfg, tensors)
    return cfg, params


# ---------------------------------------------------------------------------------------------
# Vision encoders
# ---------------------------------------------------------------------------------------------

def vision_config_from_hf(hf: dict, **overrides) -> VisionConfig:
    """Our VisionConfig from a CLIPVisionModel or CLIPModel config.json dict."""
    v = hf.get("vision_config", hf)
    return VisionConfig(
        image_size=v["image_size"], patch_size=v["patch_size"], d_model=v["hidden_size"],
        n_layers=v["num_hidden_layers"], n_heads=v["num_attention_heads"], mlp_dim=v["intermediate_size"],
        norm_eps=v.get("layer_norm_eps", 1e-5), act=v.get("hidden_act", "quick_gelu"), **overrides,
    )


def _conv_to_dense(w: np.ndarray) -> np.ndarray:
    """Conv2d weight [d, 3, p, p] -> our patch kernel [p * p * 3, d] (flattened as (py, px, rgb))."""
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def _hf_clip_params(cfg: VisionConfig, t: dict) -> dict:
    t = _strip(t, ("vision_model.",))
    d, h = cfg.d_model, cfg.n_heads
    hd = d // h
    p = {"patch_embed": {"kernel": _conv_to_dense(t["embeddings.patch_embedding.weight"])},
         "cls": t["embeddings.class_embedding"], "pos_embed": t["embeddings.position_embedding.weight"],
         "ln_pre": {"scale": t["pre_layrnorm.weight"], "bias": t["pre_layrnorm.bias"]},
         "ln_post": {"scale": t["post_layernorm.weight"], "bias": t["post_layernorm.bias"]}}
    for i in range(cfg.n_layers):
        g = lambda n: t[f"encoder.layers.{i}.{n}"]
        layer = {"ln_1": {"scale": g("layer_norm1.weight"), "bias": g("layer_norm1.bias")},
                 "ln_2": {"scale": g("layer_norm2.weight"), "bias": g("layer_norm2.bias")},
                 "o": {"kernel": g("self_attn.out_proj.weight").T.reshape(h, hd, d),
                       "bias": g("self_attn.out_proj.bias")},
                 "mlp": {"fc1": {"kernel": g("mlp.fc1.weight").T, "bias": g("mlp.fc1.bias")},
                         "fc2": {"kernel": g("mlp.fc2.weight").T, "bias": g("mlp.fc2.bias")}}}
        for n in "qkv":
            layer[n] = {"kernel": g(f"self_attn.{n}_proj.weight").T.reshape(d, h, hd),
                        "bias": g(f"self_attn.{n}_proj.bias").reshape(h, hd)}
        p[f"layers_{i}"] = layer
    return p


def _open_clip_config(t: dict, **overrides) -> VisionConfig:
    w = t["conv1.weight"]  # [d, 3, p, p]
    d, p = w.shape[0], w.shape[-1]
    n_layers = 1 + max(int(k.split(".")[2]) for k in t if k.startswith("transformer.resblocks."))
    grid = int(round((t["positional_embedding"].shape[0] - 1) ** 0.5))
    kw = dict(image_size=grid * p, patch_size=p, d_model=d, n_layers=n_layers, n_heads=d // 64,  # head width 64
              mlp_dim=t["transformer.resblocks.0.mlp.c_fc.weight"].shape[0], norm_eps=1e-5, act="quick_gelu")
    kw.update(overrides)
    return VisionConfig(**kw)


def _open_clip_params(cfg: VisionConfig, t: dict) -> dict:
    d, h = cfg.d_model, cfg.n_heads
    hd = d // h
    p = {"patch_embed": {"kernel": _conv_to_dense(t["conv1.weight"])}, "cls": t["class_embedding"],
         "pos_embed": t["positional_embedding"],
         "ln_pre": {"scale": t["ln_pre.weight"], "bias": t["ln_pre.bias"]},
         "ln_post": {"scale": t["ln_post.weight"], "bias": t["ln_post.bias"]}}
    for i in range(cfg.n_layers):
        g = lambda n: t[f"transformer.resblocks.{i}.{n}"]
        w, b = g("attn.in_proj_weight"), g("attn.in_proj_bias")  # [3d, d], rows q | k | v
        layer = {"ln_1": {"scale": g("ln_1.weight"), "bias": g("ln_1.bias")},
                 "ln_2": {"scale": g("ln_2.weight"), "bias": g("ln_2.bias")},
                 "o": {"kernel": g("attn.out_proj.weight").T.reshape(h, hd, d), "bias": g("attn.out_proj.bias")},
                 "mlp": {"fc1": {"kernel": g("mlp.c_fc.weight").T, "bias": g("mlp.c_fc.bias")},
                         "fc2": {"kernel": g("mlp.c_proj.weight").T, "bias": g("mlp.c_proj.bias")}}}
        for j, n in enumerate("qkv"):
            layer[n] = {"kernel": w[j * d:(j + 1) * d].T.reshape(d, h, hd), "bias": b[j * d:(j + 1) * d].reshape(h, hd)}
        p[f"layers_{i}"] = layer
    return p


def load_vision(path: str | Path, **overrides) -> tuple[VisionConfig, dict]:
    """(VisionConfig, params of the `vision` subtree) from a local HF CLIP or OpenCLIP checkpoint.

    `overrides` set VisionConfig fields the checkpoint cannot tell (e.g. `act="gelu"` for
    OpenCLIP models trained without QuickGELU, `n_heads` for head widths other than 64).
    """
    path = Path(path)
    tensors = read_safetensors(path) if path.is_file() else read_checkpoint_dir(path)
    if any(k.startswith("visual.") for k in tensors):  # OpenCLIP
        t = _strip({k: v for k, v in tensors.items() if k.startswith("visual.")}, ("visual.",))
        cfg = _open_clip_config(t, **overrides)
        return cfg, _open_clip_params(cfg, t)
    cfg_file = (path if path.is_dir() else path.parent) / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found next to the Hugging Face CLIP weights")
    cfg = vision_config_from_hf(json.loads(cfg_file.read_text()), **overrides)
    return cfg, _hf_clip_params(cfg, tensors)


# ---------------------------------------------------------------------------------------------
# Writing into an initialised tree
# ---------------------------------------------------------------------------------------------

def merge_pretrained(params: dict, *, lm: dict | None = None, vision: dict | None = None) -> dict:
    """`params` (boxed or plain, as from `Flamingo.init`) with the `lm` / `vision` subtrees'
    leaves replaced by the loaded arrays. Every loaded leaf must exist with the same shape;
    leaves the checkpoint lacks (cross-attention, special tokens) keep their initial values.
    """
    flat = traverse_util.flatten_dict(params)
    for root, sub in (("lm", lm), ("vision", vision)):
        if sub is None:
            continue
        for key, arr in traverse_util.flatten_dict(sub).items():
            full = (root, *key)
            if full not in flat:
                raise KeyError(f"checkpoint tensor {'/'.join(full)} has no place in the model; wrong config?")
            old = flat[full]
            value = old.value if isinstance(old, nn.Partitioned) else old
            if tuple(value.shape) != tuple(arr.shape):
                raise ValueError(f"{'/'.join(full)}: checkpoint shape {arr.shape} != model shape {value.shape}")
            new = jax.numpy.asarray(arr, dtype=value.dtype)
            flat[full] = old.replace(value=new) if isinstance(old, nn.Partitioned) else new
    return traverse_util.unflatten_dict(flat)
