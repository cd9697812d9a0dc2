"""The frozen LM matches Hugging Face `transformers` (PyTorch) logit for logit: GPT-2, Llama
(grouped-query attention; also with Llama 3.1 RoPE scaling) and Qwen2 (q/k/v biases)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.configs import LMConfig
from model.lm import LanguageModel
from model.weights import load_lm

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

VOCAB = 97
FAST = {"xla_backend_optimization_level": 0}  # tiny models: compile time dominates, not run time


@functools.lru_cache(maxsize=None)
def lm_apply(cfg: LMConfig):
    return jax.jit(LanguageModel(cfg).apply, compiler_options=FAST)


def hf_model(layout: str):
    torch.manual_seed(0)
    if layout == "qwen2":  # Llama layout with biases on q, k, v (not on the output projection)
        cfg = tf.Qwen2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                             tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        model = tf.Qwen2ForCausalLM(cfg).eval()
        with torch.no_grad():  # HF initialises biases to 0; make them count
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.add_(0.1 * torch.randn_like(p))
        return model
    if layout == "gpt2":
        cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                            bos_token_id=0, eos_token_id=0)
        return tf.GPT2LMHeadModel(cfg).eval()
    # "llama3": Llama 3.1-style RoPE scaling; with head dim 8 and these settings the four
    # frequencies fall in all three bands (kept, smoothed, slowed by `factor`).
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 32, "rope_theta": 500.0}
    scaling = {"rope_scaling": llama3} if layout == "llama3" else {}
    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                         rope_theta=500.0, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                         **scaling)
    model = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norms, so a wrong norm-weight mapping cannot hide behind ones
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=["gpt2", "llama", "llama3", "qwen2"])
def checkpoint(request, tmp_path_factory):
    layout = request.param
    model = hf_model(layout)
    path = tmp_path_factory.mktemp(f"hf_{layout}")
    model.save_pretrained(path, safe_serialization=True)
    return layout, model, path


def test_config_read_from_checkpoint(checkpoint):
    layout, model, path = checkpoint
    cfg, params = load_lm(path)
    assert cfg.layout == ("gpt2" if layout == "gpt2" else "llama")
    assert cfg.rope_type == ("llama3" if layout == "llama3" else "default")
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads) == (VOCAB, 32, 2, 4)
    assert cfg.kv_heads == (4 if layout == "gpt2" else 2)  # grouped-query attention read from config.json
    assert cfg.tie_embeddings == (layout in ("gpt2", "qwen2"))
    assert (cfg.attn_bias, cfg.o_bias) == {"gpt2": (True, True), "qwen2": (True, False)}.get(layout, (False, False))
    assert params["embed"].shape == (VOCAB, 32)


def test_logits_match_transformers(checkpoint):
    layout, model, path = checkpoint
    cfg, params = load_lm(path)
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 40))  # past llama3's original context of 32
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.numpy()
    logits, cache = lm_apply(cfg)({"params": params}, jnp.asarray(ids, jnp.int32))
    assert cache is None
    assert logits.shape == (2, 40, VOCAB)
    assert np.abs(np.asarray(logits) - ref).max() <= 1e-4


def test_left_padding_gives_the_unpadded_logits(checkpoint):
    """A left-padded prompt (attention_mask 0 on the pads) decodes exactly as it would alone."""
    layout, model, path = checkpoint
    cfg, params = load_lm(path)
    rng = np.random.default_rng(1)
    long, short = rng.integers(1, VOCAB, 13), rng.integers(1, VOCAB, 9)
    ids = np.stack([long, np.concatenate([np.zeros(4, int), short])])
    mask = ids != 0
    mask[0] = True
    logits, _ = lm_apply(cfg)({"params": params}, jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask))
    with torch.no_grad():
        ref_short = model(torch.tensor(short[None])).logits.numpy()[0]
        ref_long = model(torch.tensor(long[None])).logits.numpy()[0]
    assert np.abs(np.asarray(logits[1, 4:]) - ref_short).max() <= 1e-4
    assert np.abs(np.asarray(logits[0]) - ref_long).max() <= 1e-4


def test_unsupported_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="unsupported LM model_type 'bert'"):
        load_lm(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_lm(tmp_path / "missing")
