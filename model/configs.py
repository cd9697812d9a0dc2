"""Flamingo model configurations: frozen dataclasses and the named presets.

Shapes of the paper's models follow Alayrac et al. 2022 (Table 4 of the appendix: resampler
6 layers × 1536 wide × 16 heads; GATED XATTN-DENSE as wide as the LM, inserted before every /
every 4th / every 7th LM layer). The NFNet-F6 vision encoder is replaced by a CLIP ViT-L/14
(the encoder OpenFlamingo uses and the one whose weights are public); `VisionConfig.kind` keys
an encoder registry (model/vision.py) so an NFNet can be added without touching anything else.
Chinchilla is not public; the "llama" layout (RMSNorm, rotary positions, gated MLP) is the
closest open architecture and loads any Llama-family checkpoint.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VisionConfig:
    kind: str = "clip_vit"  # registry key in model/vision.py ("nfnet" is reserved for NFNet-F6)
    image_size: int = 224  # CLIP ViT-L/14's pretraining resolution (the paper used 320 for NFNet)
    patch_size: int = 14
    d_model: int = 1024
    n_layers: int = 24
    n_heads: int = 16
    mlp_dim: int = 4096
    norm_eps: float = 1e-5
    act: str = "quick_gelu"  # OpenAI CLIP weights were trained with QuickGELU
    keep_cls: bool = False  # OpenFlamingo hands the resampler patch tokens only
    post_norm: bool = True  # ...after CLIP's final LayerNorm (open_clip's `ln_post`)

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def n_tokens(self) -> int:
        """Visual features per frame handed to the resampler."""
        return self.n_patches + int(self.keep_cls)


@dataclass(frozen=True)
class ResamplerConfig:
    d_model: int = 1536  # paper Table 4; features are projected from the encoder's width if it differs
    n_layers: int = 6
    n_heads: int = 16
    head_dim: int = 128  # 16 × 128: with these widths the resampler has the paper's 194M parameters
    n_latents: int = 64  # 64 visual tokens per image, whatever the number of frames
    ffw_mult: int = 4
    act: str = "sqrelu"  # the paper's feed-forwards use squared ReLU; OpenFlamingo uses GELU
    max_frames: int = 8  # video clips of 8 frames at training (learned temporal embeddings)
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class LMConfig:
    layout: str = "llama"  # "gpt2" | "llama"
    vocab_size: int = 32000  # Chinchilla's SentencePiece vocabulary
    d_model: int = 2048
    n_layers: int = 24
    n_heads: int = 16
    n_kv_heads: int | None = None  # None: as many as n_heads (no grouped-query attention)
    head_dim: int | None = None  # None: d_model // n_heads
    mlp_dim: int = 5632  # gated MLP: ≈ 2.75 × d keeps the parameter count of a 4 × d GELU MLP
    max_len: int = 2048
    rope_theta: float = 10000.0
    # RoPE frequency scaling of long-context checkpoints: "default" (none), "linear" or "llama3"
    # (Llama 3.1+), with the Hugging Face parameters of the same names.
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    norm_eps: float = 1e-5
    act: str = "silu"  # gpt2 layout: "gelu_new"
    tie_embeddings: bool = False  # GPT-2 ties its output head to the token embeddings
    attn_bias: bool = False  # GPT-2 has biases everywhere; Llama none; Qwen2 on q, k, v only
    attn_out_bias: bool | None = None  # bias of the attention output projection; None: as attn_bias
    mlp_bias: bool = False

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hd(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def o_bias(self) -> bool:
        return self.attn_bias if self.attn_out_bias is None else self.attn_out_bias


@dataclass(frozen=True)
class FlamingoConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    resampler: ResamplerConfig = field(default_factory=ResamplerConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    cross_attn_every: int = 1  # a GATED XATTN-DENSE before LM layer i when (i + 1) % every == 0
    xattn_heads: int = 16
    xattn_head_dim: int = 128
    xattn_ffw_mult: int = 4
    xattn_act: str = "sqrelu"
    only_immediate: bool = True  # a token sees only the image right before it (paper default)
    media_token_id: int = 32000  # `<image>`; ids ≥ lm.vocab_size extend the frozen vocabulary
    eoc_token_id: int = 32001  # `<|endofchunk|>`
    dtype: str = "float32"  # activations; "bfloat16" for training as in the paper
    param_dtype: str = "float32"  # parameters (and so optimizer state) stay fp32
    freeze_vision: bool = True  # stop gradients at the encoder's output: it is never trained
    remat: bool = False  # rematerialise LM layers and cross-attention blocks in the backward pass

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        """Token ids whose embeddings are trainable rows outside the frozen table."""
        return (self.media_token_id, self.eoc_token_id)

    @property
    def vocab_size(self) -> int:
        """Width of the logits: the LM's vocabulary plus the appended special tokens."""
        return max(self.lm.vocab_size, max(self.special_token_ids) + 1)

    @property
    def xattn_layers(self) -> tuple[int, ...]:
        """LM layer indices preceded by a GATED XATTN-DENSE block."""
        n = self.cross_attn_every
        if n <= 0:
            return ()
        return tuple(i for i in range(self.lm.n_layers) if (i + 1) % n == 0)

    def replace(self, **kw) -> "FlamingoConfig":
        return dataclasses.replace(self, **kw)


def _tiny(layout: str) -> FlamingoConfig:
    # Small enough that a forward pass compiles and runs in well under a second on one CPU core.
    lm = LMConfig(
        layout=layout,
        vocab_size=512,
        d_model=64,
        n_layers=4,
        n_heads=4,
        n_kv_heads=4 if layout == "gpt2" else 2,  # exercise grouped-query attention on llama
        mlp_dim=256 if layout == "gpt2" else 176,
        max_len=128,
        act="gelu_new" if layout == "gpt2" else "silu",
        tie_embeddings=layout == "gpt2",
        attn_bias=layout == "gpt2",
        mlp_bias=layout == "gpt2",
    )
    return FlamingoConfig(
        vision=VisionConfig(image_size=32, patch_size=8, d_model=32, n_layers=2, n_heads=2, mlp_dim=64),
        resampler=ResamplerConfig(d_model=32, n_layers=2, n_heads=2, head_dim=16, n_latents=8,
                                  act="gelu", max_frames=4),
        lm=lm,
        cross_attn_every=2,
        xattn_heads=2,
        xattn_head_dim=16,
        xattn_act="gelu",
        media_token_id=512,
        eoc_token_id=513,
    )


def _small() -> FlamingoConfig:
    # A benchmark model: real matmul sizes (d 512) that still train at a few steps/s on a CPU.
    return FlamingoConfig(
        vision=VisionConfig(image_size=64, patch_size=8, d_model=256, n_layers=4, n_heads=4, mlp_dim=1024),
        resampler=ResamplerConfig(d_model=256, n_layers=2, n_heads=4, head_dim=64, n_latents=32, max_frames=8),
        lm=LMConfig(layout="llama", vocab_size=8192, d_model=512, n_layers=8, n_heads=8, n_kv_heads=8,
                    mlp_dim=1408, max_len=512),
        cross_attn_every=2,
        xattn_heads=8,
        xattn_head_dim=64,
        media_token_id=8192,
        eoc_token_id=8193,
    )


def _paper(d: int, layers: int, heads: int, mlp: int, every: int) -> FlamingoConfig:
    return FlamingoConfig(
        vision=VisionConfig(),  # CLIP ViT-L/14 in place of NFNet-F6 (435M)
        resampler=ResamplerConfig(),  # the same 194M resampler for all three sizes
        lm=LMConfig(layout="llama", vocab_size=32000, d_model=d, n_layers=layers, n_heads=heads,
                    mlp_dim=mlp, max_len=2048),
        cross_attn_every=every,
        xattn_heads=heads,  # the cross-attention is as wide as the LM (head dim 128)
        xattn_head_dim=d // heads,
        dtype="bfloat16",
    )


_PRESETS = {
    "tiny": lambda: _tiny("gpt2"),
    "tiny-gpt2": lambda: _tiny("gpt2"),
    "tiny-llama": lambda: _tiny("llama"),
    "small": _small,
    # Chinchilla 1.4B / 7B / 70B: layers, width and heads of the paper's Table 4; the gated MLP's
    # width is chosen so the LM has the paper's parameter count (1.36B / 7.1B / 70.3B here).
    # Cross-attention before every / every 4th / every 7th layer.
    "3b": lambda: _paper(2048, 24, 16, 5632, 1),
    "9b": lambda: _paper(4096, 40, 32, 8448, 4),
    "80b": lambda: _paper(8192, 80, 64, 24576, 7),
}

CONFIG_NAMES = tuple(_PRESETS)


def get_config(name: str) -> FlamingoConfig:
    """The named preset: tiny (tests), tiny-llama, small (benchmarks), 3b, 9b, 80b."""
    try:
        return _PRESETS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; choose one of {', '.join(CONFIG_NAMES)}") from None
