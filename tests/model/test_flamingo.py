"""Flamingo end to end: configs, trainable parameters, gates at 0, media masking, pretrained LMs."""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from model.configs import CONFIG_NAMES, FlamingoConfig, get_config
from model.flamingo import Flamingo, random_params, trainable_mask
from model.lm import LanguageModel

FAST = {"xla_backend_optimization_level": 0}
IMG, EOC = 512, 513  # tiny's `<image>` and `<|endofchunk|>`
# Three images in three chunks, with text before the first: shared by the tests below so that
# they reuse one compiled forward pass.
IDS = jnp.array([[5, 6, IMG, 7, 8, 9, IMG, 10, 11, EOC, IMG, 12, 13, 14, 15, EOC]], jnp.int32)
LOGICAL_NAMES = {None, "vocab", "embed", "mlp", "heads", "kv_heads", "kv", "norm", "latents", "patch", "frames",
                 "positions", "vision_embed"}


@functools.lru_cache(maxsize=None)
def forward(cfg: FlamingoConfig):
    """Jitted (params, images, ids) -> (logits, sown intermediates)."""
    m = Flamingo(cfg)
    return jax.jit(lambda p, x, ids: m.apply({"params": p}, x, ids, mutable=["intermediates"]),
                   compiler_options=FAST)


@functools.lru_cache(maxsize=None)
def bare_lm(cfg):
    m = LanguageModel(cfg)
    return jax.jit(lambda p, ids: m.apply({"params": p}, ids)[0], compiler_options=FAST)


def flat(tree) -> dict[str, object]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(nn.unbox(tree)).items()}


def set_leaves(params, **values):
    """params with every leaf whose name is a key of `values` set to that value."""
    def f(path, x):
        name = getattr(path[-1], "key", None)
        return jnp.full_like(x, values[name]) if name in values else x
    return jax.tree_util.tree_map_with_path(f, nn.unbox(params))


def images(cfg, b, m, t=1, seed=0):
    s = cfg.vision.image_size
    return jnp.asarray(np.random.default_rng(seed).standard_normal((b, m, t, s, s, 3)), jnp.float32)


# --------------------------------------------------------------------------------------------- configs

def test_presets_insert_cross_attention_as_in_the_paper():
    counts = {name: len(get_config(name).xattn_layers) for name in CONFIG_NAMES}
    assert counts["3b"] == 24 and counts["9b"] == 10 and counts["80b"] == 11  # every / 4th / 7th layer
    assert get_config("9b").xattn_layers[:2] == (3, 7)  # before layer i when (i + 1) % 4 == 0
    with pytest.raises(ValueError, match="unknown model config 'huge'"):
        get_config("huge")


def test_3b_parameter_counts_match_the_paper():
    """Resampler 194M and GATED XATTN-DENSE 1.2B (paper Table 1); the LM ~1.4B."""
    cfg = get_config("3b")
    x = jax.ShapeDtypeStruct((1, 1, 1, 224, 224, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda a, b: Flamingo(cfg).init(jax.random.PRNGKey(0), a, b)["params"], x, ids)
    sizes = {k: int(np.prod(v.shape)) for k, v in flat(shapes).items()}
    resampler = sum(v for k, v in sizes.items() if k.startswith("resampler/"))
    xattn = sum(v for k, v in sizes.items() if "/xattn_" in k)
    lm = sum(v for k, v in sizes.items() if k.startswith("lm/") and "/xattn_" not in k)
    assert 0.9 * 194e6 < resampler < 1.1 * 194e6
    assert 1.1e9 < xattn < 1.3e9
    assert 1.2e9 < lm < 1.5e9


def test_every_parameter_carries_logical_axis_names():
    params = random_params(get_config("tiny-llama"))
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(x, nn.Partitioned) for x in leaves)
    for x in leaves:
        assert len(x.names) == x.value.ndim
        assert set(x.names) <= LOGICAL_NAMES, x.names


def test_trainable_mask_trains_resampler_xattn_and_new_tokens_only():
    params = random_params(get_config("tiny-llama"))
    mask = flat(trainable_mask(nn.unbox(params)))
    trained = {k for k, v in mask.items() if v}
    assert trained, "nothing trainable"
    for k in mask:
        expect = k.startswith("resampler/") or "/xattn_" in k or k in ("lm/new_token_embed", "lm/new_token_head")
        assert (k in trained) == expect, k
    assert {"lm/xattn_1/attn_gate", "lm/xattn_1/ffw_gate", "lm/new_token_embed"} <= trained
    assert not any(k.startswith("vision/") for k in trained)
    assert "lm/embed" not in trained  # the frozen table; the new rows live in new_token_embed
    # Boxed trees give a mask of the same structure (a bool at each box).
    boxed = trainable_mask(params)
    assert jax.tree.structure(boxed) == jax.tree.structure(trainable_mask(nn.unbox(params)))
    assert all(jax.tree.leaves(flat(trainable_mask(nn.unbox(params), train_lm=True, train_vision=True))))


# --------------------------------------------------------------------------------------------- behaviour

@pytest.mark.parametrize("layout", ["gpt2", "llama"])
def test_with_gates_at_zero_logits_equal_the_bare_lm_for_any_images(layout):
    cfg = get_config(f"tiny-{layout}")
    params = nn.unbox(random_params(cfg))
    lm = params["lm"]
    # The bare LM with the special tokens' rows appended to its (frozen) tables.
    bare_cfg = dataclasses.replace(cfg.lm, vocab_size=cfg.vocab_size)
    bare = {k: v for k, v in lm.items() if not k.startswith(("xattn_", "new_token"))}
    bare["embed"] = jnp.concatenate([lm["embed"], lm["new_token_embed"]])
    if not cfg.lm.tie_embeddings:
        bare["head"] = jnp.concatenate([lm["head"], lm["new_token_head"].T], axis=1)
    expect = bare_lm(bare_cfg)(bare, IDS)
    for seed in (0, 1):
        logits, _ = forward(cfg)(params, images(cfg, 1, 3, seed=seed), IDS)
        assert logits.shape == (1, IDS.shape[1], cfg.vocab_size)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(expect), atol=1e-5)


@pytest.mark.parametrize("only_immediate", [True, False], ids=["immediate", "all_previous"])
def test_changing_image_k_changes_only_what_the_masking_allows(only_immediate):
    cfg = get_config("tiny").replace(only_immediate=only_immediate)
    params = set_leaves(random_params(cfg, std=0.1), attn_gate=1.0, ffw_gate=1.0)
    ids = IDS
    pos = [2, 6, 10]  # the three `<image>` tokens
    k = 1
    x = images(cfg, 1, 3)
    x2 = x.at[:, k].set(images(cfg, 1, 1, seed=7)[:, 0])
    (la, sa), (lb, sb) = forward(cfg)(params, x, ids), forward(cfg)(params, x2, ids)
    first = f"xattn_{cfg.xattn_layers[0]}"
    xa = np.asarray(sa["intermediates"]["lm"][first]["xattn_out"][0][0])  # [L, d]
    xb = np.asarray(sb["intermediates"]["lm"][first]["xattn_out"][0][0])
    changed = np.abs(xa - xb).max(-1) > 1e-6
    end = pos[k + 1] if only_immediate else ids.shape[1]
    expect = np.zeros(ids.shape[1], bool)
    expect[pos[k]:end] = True
    assert changed.tolist() == expect.tolist()
    assert np.all(xa[:pos[0]] == 0.0)  # text before the first image gets no visual input at all
    # Logits never change before image k; after it they do (also later chunks in immediate mode,
    # through causal self-attention, as the paper notes).
    dl = np.abs(np.asarray(la[0]) - np.asarray(lb[0])).max(-1)
    assert np.all(dl[:pos[k]] == 0.0)
    assert np.all(dl[pos[k]:] > 1e-6)


def test_video_frames_are_ordered_and_media_kept_apart():
    """encode_media on clips [B, M, T, ...]: reversing one clip's frames changes that clip's
    visual tokens only (temporal embeddings), never another sample's or media's."""
    cfg = get_config("tiny")
    params = nn.unbox(random_params(cfg, std=0.1))
    m = Flamingo(cfg)
    enc = jax.jit(lambda p, x: m.apply({"params": p}, x, method=Flamingo.encode_media), compiler_options=FAST)
    x = images(cfg, 2, 2, t=3)
    a = np.asarray(enc(params, x))
    assert a.shape == (2, 2, cfg.resampler.n_latents, cfg.resampler.d_model)
    b = np.asarray(enc(params, x.at[1, 0].set(x[1, 0, ::-1])))
    assert np.abs(a[1, 0] - b[1, 0]).max() > 1e-3
    np.testing.assert_allclose(np.delete(a.reshape(4, -1), 2, 0), np.delete(b.reshape(4, -1), 2, 0), atol=1e-6)


def test_bfloat16_activations_keep_fp32_params_and_logits():
    cfg = get_config("tiny")
    params = set_leaves(random_params(cfg, std=0.1), attn_gate=1.0, ffw_gate=1.0)
    x = images(cfg, 1, 3)
    ref, _ = forward(cfg)(params, x, IDS)
    low, _ = forward(cfg.replace(dtype="bfloat16"))(params, x, IDS)
    assert low.dtype == jnp.float32 and np.isfinite(np.asarray(low)).all()
    assert np.abs(np.asarray(low) - np.asarray(ref)).max() < 0.1 * np.abs(np.asarray(ref)).max()
    assert np.asarray(low).argmax(-1).tolist() == np.asarray(ref).argmax(-1).tolist()


def test_gradients_reach_the_gates_and_never_the_vision_encoder():
    """At initialisation only the gates' gradients are non-zero inside the blocks (tanh(0) = 0
    scales everything behind them); the frozen encoder gets exactly zero gradient. (With
    rematerialisation on, as a large model would train.)"""
    tiny = get_config("tiny")  # shrunk further: a backward pass compiles slowly on CPU
    cfg = tiny.replace(vision=dataclasses.replace(tiny.vision, n_layers=1),
                       resampler=dataclasses.replace(tiny.resampler, n_layers=1),
                       lm=dataclasses.replace(tiny.lm, n_layers=2), cross_attn_every=1, remat=True)
    params = nn.unbox(random_params(cfg))
    ids = jnp.array([[IMG, 5, 6, 7, EOC, IMG, 8, 9]], jnp.int32)
    x = images(cfg, 1, 2)

    def loss(p):
        logits = Flamingo(cfg).apply({"params": p}, x, ids)
        return -jax.nn.log_softmax(logits)[0, :-1][jnp.arange(7), ids[0, 1:]].mean()

    grads = flat(jax.jit(jax.grad(loss), compiler_options=FAST)(params))
    assert np.abs(grads["lm/xattn_0/attn_gate"]) > 0 and np.abs(grads["lm/xattn_1/ffw_gate"]) > 0
    assert np.all(np.asarray(grads["lm/xattn_0/q/kernel"]) == 0)
    assert all(np.all(np.asarray(v) == 0) for k, v in grads.items() if k.startswith("vision/"))
    assert np.abs(np.asarray(grads["lm/new_token_embed"])).max() > 0


def test_pretrained_lm_inside_flamingo_reproduces_transformers(tmp_path):
    """A local HF checkpoint merged into Flamingo: text-only logits equal the PyTorch model's."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    from model.weights import load_lm, merge_pretrained

    torch.manual_seed(0)  # (tests/model/test_lm.py checks both layouts' LMs alone)
    hf = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                          bos_token_id=0, eos_token_id=0))
    hf.eval().save_pretrained(tmp_path, safe_serialization=True)
    lm_cfg, lm_params = load_lm(tmp_path)
    cfg = get_config("tiny").replace(lm=lm_cfg, media_token_id=50, eoc_token_id=51, cross_attn_every=1)
    params = merge_pretrained(random_params(cfg), lm=lm_params)
    assert isinstance(params["lm"]["embed"], nn.Partitioned)  # logical names survive the merge
    ids = np.random.default_rng(0).integers(0, 50, (2, 9))
    logits, _ = forward(cfg)(nn.unbox(params), images(cfg, 2, 1), jnp.asarray(ids, jnp.int32))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    assert logits.shape == (2, 9, 52)
    assert np.abs(np.asarray(logits[..., :50]) - ref).max() <= 1e-4
    with pytest.raises(ValueError, match="checkpoint shape"):
        merge_pretrained(random_params(get_config("tiny")), lm=lm_params)
