"""The CLIP vision tower matches Hugging Face `CLIPVisionModel`, from HF and OpenCLIP checkpoints."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.configs import VisionConfig
from model.vision import CLIP_MEAN, ClipVisionTransformer, build_vision_encoder, normalize_images
from model.weights import load_vision

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

FAST = {"xla_backend_optimization_level": 0}
HF_CFG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8, layer_norm_eps=1e-5)


@functools.lru_cache(maxsize=None)
def encode(cfg: VisionConfig, method: str):
    """Jitted (params, images [N, H, W, 3]) -> features, one compile per config and method."""
    m = ClipVisionTransformer(cfg)
    fn = getattr(ClipVisionTransformer, method)
    return jax.jit(lambda p, x: m.apply({"params": p}, x, method=fn), compiler_options=FAST)


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    torch.manual_seed(0)
    model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**HF_CFG)).eval()
    with torch.no_grad():  # non-trivial norms and class token, so every mapping is exercised
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name or "class_embedding" in name:
                p.add_(0.2 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("hf_clip")
    model.save_pretrained(path, safe_serialization=True)
    images = np.random.default_rng(0).standard_normal((3, 32, 32, 3)).astype(np.float32)  # NHWC, normalised
    with torch.no_grad():
        out = model(pixel_values=torch.tensor(images).permute(0, 3, 1, 2))
    return model, path, images, out


def test_hidden_states_and_pooled_match_transformers(hf_clip):
    model, path, images, ref = hf_clip
    cfg, params = load_vision(path)
    assert (cfg.image_size, cfg.patch_size, cfg.d_model, cfg.n_layers, cfg.n_heads) == (32, 8, 32, 2, 4)
    hidden = encode(cfg, "hidden_states")(params, jnp.asarray(images))
    assert hidden.shape == (3, 1 + 16, 32)
    assert np.abs(np.asarray(hidden) - ref.last_hidden_state.numpy()).max() <= 1e-4
    pooled = encode(cfg, "pooled")(params, jnp.asarray(images))
    assert np.abs(np.asarray(pooled) - ref.pooler_output.numpy()).max() <= 1e-4


def test_features_for_the_resampler_are_normed_patch_tokens(hf_clip):
    """As OpenFlamingo: patch tokens (class token dropped) after the final LayerNorm."""
    model, path, images, ref = hf_clip
    cfg, params = load_vision(path)
    feats = encode(cfg, "__call__")(params, jnp.asarray(images))
    with torch.no_grad():
        tower = getattr(model, "vision_model", model)  # transformers 5 dropped the wrapper
        expect = tower.post_layernorm(ref.last_hidden_state)[:, 1:].numpy()
    assert feats.shape == (3, cfg.n_tokens, 32) == (3, 16, 32)
    assert np.abs(np.asarray(feats) - expect).max() <= 1e-4


def to_open_clip(model) -> dict:
    """The HF CLIP vision weights under OpenCLIP's names (`visual.*`, fused in_proj)."""
    sd = {k.removeprefix("vision_model."): v for k, v in model.state_dict().items()}
    out = {"visual.conv1.weight": sd["embeddings.patch_embedding.weight"],
           "visual.class_embedding": sd["embeddings.class_embedding"],
           "visual.positional_embedding": sd["embeddings.position_embedding.weight"],
           "visual.ln_pre.weight": sd["pre_layrnorm.weight"], "visual.ln_pre.bias": sd["pre_layrnorm.bias"],
           "visual.ln_post.weight": sd["post_layernorm.weight"], "visual.ln_post.bias": sd["post_layernorm.bias"],
           "visual.proj": torch.zeros(32, 16)}
    for i in range(HF_CFG["num_hidden_layers"]):
        a, b = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        out[b + "attn.in_proj_weight"] = torch.cat([sd[a + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        out[b + "attn.in_proj_bias"] = torch.cat([sd[a + f"self_attn.{n}_proj.bias"] for n in "qkv"])
        for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            for w in ("weight", "bias"):
                out[f"{b}{ours}.{w}"] = sd[f"{a}{theirs}.{w}"]
    out["text.token_embedding.weight"] = torch.zeros(10, 8)  # a full CLIP file also holds the text tower
    return {k: v.contiguous() for k, v in out.items()}


def test_open_clip_checkpoint_loads_to_the_same_features(hf_clip, tmp_path):
    model, _, images, ref = hf_clip
    f = tmp_path / "open_clip_model.safetensors"
    safetensors_torch.save_file(to_open_clip(model), str(f))
    cfg, params = load_vision(f, n_heads=4)  # head width 8 here; OpenCLIP's default of 64 is not
    assert (cfg.image_size, cfg.patch_size, cfg.d_model, cfg.n_layers, cfg.mlp_dim) == (32, 8, 32, 2, 64)
    hidden = encode(cfg, "hidden_states")(params, jnp.asarray(images))
    assert np.abs(np.asarray(hidden) - ref.last_hidden_state.numpy()).max() <= 1e-4


def test_full_clip_model_checkpoint_loads(tmp_path, hf_clip):
    """A whole CLIPModel directory (text tower included, nested vision_config) gives the vision tower."""
    _, _, images, _ = hf_clip
    torch.manual_seed(1)
    full = tf.CLIPModel(tf.CLIPConfig(
        vision_config=HF_CFG,
        text_config=dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16),
        projection_dim=16)).eval()
    full.save_pretrained(tmp_path, safe_serialization=True)
    cfg, params = load_vision(tmp_path)
    with torch.no_grad():
        ref = full.vision_model(pixel_values=torch.tensor(images).permute(0, 3, 1, 2)).last_hidden_state.numpy()
    hidden = encode(cfg, "hidden_states")(params, jnp.asarray(images))
    assert np.abs(np.asarray(hidden) - ref).max() <= 1e-4


def test_unknown_encoder_kind_names_the_registered_ones():
    with pytest.raises(ValueError, match="no vision encoder 'nfnet'; registered: clip_vit"):
        build_vision_encoder(VisionConfig(kind="nfnet"))


def test_normalize_images_uses_clip_statistics():
    px = np.full((2, 1, 4, 4, 3), 255, np.uint8)
    px[0] = np.round(np.asarray(CLIP_MEAN) * 255).astype(np.uint8)
    x = normalize_images(px)
    assert x.dtype == np.float32 and x.shape == px.shape
    assert np.abs(x[0]).max() < 0.01  # the mean colour maps to ~0
    assert np.all(x[1] > 1.9)
