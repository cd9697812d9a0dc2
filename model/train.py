"""``train-flamingo``: train Flamingo on m3w shards with sharded JAX, dataset mixtures and exact resume.

Run locally on the bundled sample (8 simulated devices)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
    train-flamingo --shards demo-output/shards --config tiny --mesh data=4,model=2 --steps 20 --out runs/tiny

Subcommands: ``train-flamingo tokenizer --shards DIR --vocab-size N --out tokenizer.json`` trains a
byte-level BPE on the corpus; ``train-flamingo caption --checkpoint RUN_DIR --image FILE`` captions
an image with a trained run; ``train-flamingo eval --checkpoint RUN_DIR --task TASK --data DIR`` runs
the few-shot benchmarks (docs/EVAL.md). See docs/TRAINING.md for pods and GPU clusters.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass
class DatasetSpec:
    """One dataset of the mixture: shards of one kind, its weight λ_m and per-step batch size."""

    name: str
    shards: list[str]
    kind: str = "interleaved"  # "interleaved" | "pairs" | "videos"
    weight: float = 1.0  # λ_m in Flamingo's weighted sum of per-dataset losses
    batch_size: int = 8  # global batch of this dataset per step


@dataclass
class TrainConfig:
    """Everything a run needs besides the data; saved as ``train_config.json`` in the run folder."""

    datasets: list[DatasetSpec]
    out: str
    model: str = "tiny"  # preset name or a JSON/YAML file of FlamingoConfig fields
    steps: int = 100
    mesh: str | None = None  # "data=4,model=2"; default: every device on data
    rules: list[tuple[str, Any]] | None = None  # logical name → mesh axis; None = sharding.DEFAULT_RULES
    mixing: str = "accumulate"  # "accumulate" (Flamingo: weighted sum of grads, one update) | "round_robin"
    lr: float = 1e-4  # OpenFlamingo / Flamingo AdamW
    warmup_steps: int = 50  # linear warm-up, then constant (Flamingo)
    weight_decay: float = 0.1  # on cross-attention weights only (OpenFlamingo)
    clip_norm: float = 1.0
    b1: float = 0.9
    b2: float = 0.999
    precision: str | None = None  # "fp32" | "bf16" activations+grads; params/opt state stay fp32. None: the preset's
    seed: int = 0
    tokenizer: str | None = None  # tokenizer.json; None: trained on the shards (saved in the run folder)
    vocab_size: int = 8192  # BPE size when the tokenizer is trained here
    lm_checkpoint: str | None = None
    vision_checkpoint: str | None = None
    train_lm: bool | None = None  # None: train the LM exactly when there is no LM checkpoint
    max_images: int = 5
    max_tokens: int = 256
    frames: int = 8
    shuffle_buffer: int = 256
    workers: int = 2
    log_every: int = 1
    ckpt_every: int = 100
    keep_checkpoints: int = 3
    async_checkpoint: bool = True
    progress: bool = True
    peak_flops: float | None = None  # per device; None: known accelerators, or a measured matmul on CPU
    eval_every: int = 0  # few-shot evaluation every N steps (0: never); logged next to the loss
    eval_tasks: list[str] = dataclasses.field(default_factory=list)  # model/eval/tasks.py names
    eval_data: list[str] = dataclasses.field(default_factory=list)  # one benchmark folder per task
    eval_shots: list[int] = dataclasses.field(default_factory=lambda: [0])
    eval_samples: int = 64  # queries per task and evaluation: a quick signal, not the full benchmark
    image_cache: str | None = None  # image bytes for URL-only shards (OBELICS/MMC4 as published)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["datasets"] = [DatasetSpec(**x) for x in d["datasets"]]
        if d.get("rules") is not None:
            d["rules"] = [tuple(r) for r in d["rules"]]
        return TrainConfig(**d)


def _say(msg: str) -> None:
    print(f"train-flamingo: {msg}", file=sys.stderr, flush=True)


def load_model_config(spec: str):
    """A preset name, or a JSON/YAML file of FlamingoConfig fields (``base`` names a preset to start from)."""
    from model.configs import CONFIG_NAMES, get_config

    if spec.lower() in CONFIG_NAMES:
        return get_config(spec)
    p = Path(spec)
    if not p.is_file():
        raise ValueError(f"--config {spec!r} is neither a preset ({', '.join(CONFIG_NAMES)}) nor a file")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        d = yaml.safe_load(text)
    else:
        d = json.loads(text)
    return config_from_dict(d)


def config_from_dict(d: dict[str, Any]):
    from model.configs import FlamingoConfig, LMConfig, ResamplerConfig, VisionConfig, get_config

    d = dict(d)
    base = get_config(d.pop("base")) if "base" in d else FlamingoConfig()
    subs = {"vision": VisionConfig, "resampler": ResamplerConfig, "lm": LMConfig}
    kw: dict[str, Any] = {}
    for k, v in d.items():
        if k in subs:
            kw[k] = dataclasses.replace(getattr(base, k), **v)
        else:
            kw[k] = v
    return dataclasses.replace(base, **kw)


def config_to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def adapt_to_tokenizer(cfg, tok, from_scratch: bool, model_axis: int = 1):
    """Point the model's special tokens at the tokenizer's ids; size the vocabulary from it when
    the LM is trained from scratch (rounded up so the vocab axis splits over ``model``)."""
    kw: dict[str, Any] = {"media_token_id": tok.image_id, "eoc_token_id": tok.eoc_id}
    if from_scratch:
        mult = 64 * model_axis
        vocab = int(math.ceil(tok.vocab_size / mult) * mult)
        kw["lm"] = dataclasses.replace(cfg.lm, vocab_size=vocab)
    elif max(tok.image_id, tok.eoc_id) >= cfg.lm.vocab_size + 2:
        raise ValueError("tokenizer's <image>/<|endofchunk|> ids do not fit the LM checkpoint's vocabulary")
    return dataclasses.replace(cfg, **kw)


# ---------------------------------------------------------------------------------------------
# Loss, optimizer, step

# CLIP's normalisation (the encoder the presets use; model/vision.py expects normalised pixels).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_images(images, dtype):
    """uint8 [..., 3] → normalised float ``dtype`` (done on device: 4× less host→device traffic)."""
    import jax.numpy as jnp

    x = images.astype(jnp.float32) * (1.0 / 255.0)
    x = (x - jnp.asarray(IMAGE_MEAN, jnp.float32)) / jnp.asarray(IMAGE_STD, jnp.float32)
    return x.astype(dtype)


def token_nll(logits, targets, loss_mask):
    """Mean next-token NLL over the masked positions: logits [B, L, V], targets/loss_mask [B, L]."""
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return (nll * loss_mask).sum() / jnp.maximum(loss_mask.sum(), 1.0)


def is_xattn_weight(path: tuple, x: Any) -> bool:
    """Weight decay applies to the cross-attention blocks' matrices only (not gates, norms)."""
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return any(n.startswith("xattn_") for n in names) and getattr(x, "ndim", 0) >= 2


def make_optimizer(tc: TrainConfig, trainable: Any):
    """AdamW (warm-up then constant, clipping, decay on xattn weights) on trainable leaves; frozen
    leaves get ``set_to_zero`` and so carry no optimizer state."""
    import jax
    import optax

    import jax.numpy as jnp

    warm = max(1, tc.warmup_steps)
    # Linear warm-up reaching lr after `warm` updates (the first update already moves), then flat.
    schedule = lambda count: tc.lr * jnp.minimum(1.0, (count + 1) / warm)
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(is_xattn_weight, params)
    inner = optax.chain(
        optax.clip_by_global_norm(tc.clip_norm),
        optax.adamw(schedule, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay, mask=decay_mask),
    )
    labels = jax.tree.map(lambda m: "train" if m else "frozen", trainable)
    return optax.multi_transform({"train": inner, "frozen": optax.set_to_zero()}, labels), schedule


class Trainer:
    """Model, mesh, shardings and the compiled step for one configuration.

    State: ``{"params", "opt_state", "step" (int32 []), "rng" (uint32 [2])}``; params fp32, sharded
    by the logical rules; opt_state additionally sharded over ``data`` (ZeRO-1).
    """

    def __init__(self, model_cfg, tc: TrainConfig, mesh, kinds: Sequence[str], train_lm: bool):
        import flax.linen as nn
        import jax
        import jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec as P

        from model.flamingo import Flamingo, trainable_mask
        from model.sharding import DEFAULT_RULES, logical_specs, param_shardings, zero1_sharding

        self.cfg, self.tc, self.mesh = model_cfg, tc, mesh
        self.rules = tuple(tuple(r) for r in tc.rules) if tc.rules else DEFAULT_RULES
        self.model = Flamingo(model_cfg)
        self.weights = [d.weight for d in tc.datasets]
        self.names = [d.name for d in tc.datasets]
        self.kinds = list(kinds)
        v = model_cfg.vision
        dummy_images = jnp.zeros((1, 1, 1, v.image_size, v.image_size, 3), jnp.float32)
        dummy_ids = jnp.zeros((1, 8), jnp.int32)

        def init_boxed(rng):
            return self.model.init(rng, dummy_images, dummy_ids)["params"]

        boxed = jax.eval_shape(init_boxed, jax.random.key(0))
        self.logical = logical_specs(boxed)
        abstract = nn.unbox(boxed)
        self.trainable = trainable_mask(abstract, train_lm=train_lm)
        self.optimizer, self.schedule = make_optimizer(tc, self.trainable)
        self.param_sharding = param_shardings(abstract, self.logical, mesh, self.rules)
        abstract_opt = jax.eval_shape(self.optimizer.init, abstract)
        self.opt_sharding = zero1_sharding(abstract_opt, self.param_sharding, mesh)
        replicated = NamedSharding(mesh, P())
        self.state_sharding = {
            "params": self.param_sharding,
            "opt_state": self.opt_sharding,
            "step": replicated,
            "rng": replicated,
        }
        self.batch_sharding = NamedSharding(mesh, P("data"))
        self._init_boxed = init_boxed
        self.abstract_state = jax.eval_shape(self._init_state, jax.random.key_data(jax.random.key(0)))
        self.n_trainable = sum(int(np.prod(x.shape)) for x, m in zip(jax.tree.leaves(abstract), jax.tree.leaves(self.trainable)) if m)
        self.n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
        self._step = jax.jit(
            self._train_step,
            in_shardings=(self.state_sharding, None),
            out_shardings=(self.state_sharding, replicated),
            donate_argnums=(0,),
        )
        self._init = jax.jit(self._init_state, out_shardings=self.state_sharding)
        self._compiled: dict[Any, Any] = {}
        self.flops: dict[Any, float | None] = {}

    # --- state -------------------------------------------------------------------------------
    def _init_state(self, rng_data):
        import flax.linen as nn
        import jax
        import jax.numpy as jnp

        rng = jax.random.wrap_key_data(rng_data)
        params = nn.unbox(self._init_boxed(jax.random.fold_in(rng, 0)))
        return {
            "params": params,
            "opt_state": self.optimizer.init(params),
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.fold_in(rng, 1)),
        }

    def init_state(self, seed: int):
        import jax

        # No logical-rules context here: flax would constrain kernels before DenseGeneral reshapes
        # them; out_shardings places the result instead.
        return self._init(jax.random.key_data(jax.random.key(seed)))

    def _context(self):
        import contextlib

        import jax

        # Only the mesh: under flax's logical_axis_rules, DenseGeneral's multi-axis kernels fail the
        # shape check flax runs at apply time (the constraint hits the kernel before its reshape).
        # Layouts come from the parameters' and the batch's shardings, which GSPMD propagates.
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        return stack

    # --- step --------------------------------------------------------------------------------
    def loss(self, params, batch):
        """Mean NLL of one dataset's batch (frozen leaves pass no gradient)."""
        import jax

        from model.layers import dtype_of

        params = jax.tree.map(lambda m, p: p if m else jax.lax.stop_gradient(p), self.trainable, params)
        images = normalize_images(batch["images"], dtype_of(self.cfg.dtype))
        logits = self.model.apply({"params": params}, images, batch["input_ids"], attention_mask=batch["attention_mask"])
        return token_nll(logits, batch["targets"], batch["loss_mask"])

    def _train_step(self, state, batches):
        """``batches``: tuple of per-dataset batch dicts (None = not used this step, round-robin).

        Accumulation: grads = Σ_m λ_m ∇L_m, one AdamW update. Returns (new state, metrics)."""
        import jax
        import jax.numpy as jnp
        import optax

        grads = None
        metrics: dict[str, Any] = {}
        total = jnp.zeros((), jnp.float32)
        for name, w, batch in zip(self.names, self.weights, batches):
            if batch is None:
                continue
            loss, g = jax.value_and_grad(self.loss)(state["params"], batch)
            g = jax.tree.map(lambda x: x * w, g)
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
            metrics[f"loss/{name}"] = loss
            total = total + w * loss
        updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        trainable_grads = [g for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(self.trainable)) if m]
        metrics["loss"] = total
        metrics["grad_norm"] = optax.global_norm(trainable_grads)
        metrics["lr"] = self.schedule(state["step"])
        new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}
        return new, metrics

    def compiled(self, state, batches):
        """The step compiled for these batch shapes (compiled once; its FLOPs kept for MFU)."""
        key = tuple(None if b is None else tuple((k, v.shape, str(v.dtype)) for k, v in sorted(b.items())) for b in batches)
        if key not in self._compiled:
            with self._context():
                exe = self._step.lower(state, batches).compile()
            self._compiled[key] = exe
            self.flops[key] = _flops_of(exe)
        return self._compiled[key], self.flops[key]

    def step(self, state, batches):
        """One update: (state, tuple of per-dataset batches or None) -> (new state, metrics)."""
        exe, _ = self.compiled(state, batches)
        with self._context():
            return exe(state, batches)

    def put(self, local_batch: dict[str, np.ndarray]):
        """This process's share of a batch → global arrays sharded over ``data``."""
        import jax

        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v) for k, v in local_batch.items()}

    def step_flops(self, state, batches) -> float | None:
        """FLOPs of one compiled step (XLA's cost analysis), for the MFU estimate."""
        return self.compiled(state, batches)[1]


def _flops_of(exe) -> float | None:
    try:
        cost = exe.cost_analysis()
    except Exception as e:  # cost analysis is best-effort on some backends; MFU is then omitted
        _say(f"no FLOP count for MFU ({type(e).__name__}: {e})")
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0)) or None


_TRAINERS: dict[str, Trainer] = {}


def get_trainer(model_cfg, tc: TrainConfig, mesh_shape: dict[str, int], kinds: Sequence[str], train_lm: bool) -> Trainer:
    """A Trainer for this configuration, reused within the process (its compiled step included),
    so a resumed or repeated run in one process does not compile again."""
    from model.sharding import make_mesh

    fields = {k: v for k, v in dataclasses.asdict(tc).items()
              if k in ("rules", "mixing", "lr", "warmup_steps", "weight_decay", "clip_norm", "b1", "b2")}
    fields["datasets"] = [(d.name, d.weight) for d in tc.datasets]
    key = json.dumps([config_to_dict(model_cfg), fields, mesh_shape, list(kinds), train_lm], sort_keys=True, default=str)
    if key not in _TRAINERS:
        _TRAINERS[key] = Trainer(model_cfg, tc, make_mesh(mesh_shape), kinds, train_lm)
    return _TRAINERS[key]


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_manager(directory: str, tc: TrainConfig):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(
        max_to_keep=tc.keep_checkpoints,
        enable_async_checkpointing=tc.async_checkpoint,
        create=True,
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=opts)


def save_checkpoint(mgr, step: int, state, meta: dict[str, Any]) -> None:
    import orbax.checkpoint as ocp

    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def restore_checkpoint(mgr, abstract_state, state_sharding, step: int | None = None):
    """(state, meta) of ``step`` (default: latest), arrays placed with ``state_sharding``."""
    import jax
    import orbax.checkpoint as ocp

    step = mgr.latest_step() if step is None else step
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, state_sharding
    )
    got = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return got["state"], got["meta"]


# ---------------------------------------------------------------------------------------------
# Throughput accounting

KNOWN_PEAK_FLOPS = {  # dense bf16 per chip
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
}


@functools.lru_cache(maxsize=None)
def matmul_flops_per_s(n: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of a plain ``jnp.dot`` of two n×n fp32 matrices on the default device."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_flops_per_device(tc: TrainConfig) -> tuple[float, str]:
    import jax

    if tc.peak_flops:
        return tc.peak_flops, "given"
    kind = jax.devices()[0].device_kind
    for k, v in KNOWN_PEAK_FLOPS.items():
        if kind.startswith(k):
            return v, kind
    # CPU: the simulated devices share the host's cores, so the whole host is one "chip".
    return matmul_flops_per_s() / jax.device_count(), "measured jnp.dot"


# ---------------------------------------------------------------------------------------------
# The run


def resolve_tokenizer(tc: TrainConfig, shards: list[str]):
    """The run's tokenizer: --tokenizer, else the run folder's, else a BPE trained on the shards."""
    from model.data import iter_texts
    from model.tokenizer import byte_tokenizer, load_tokenizer, train_bpe

    saved = Path(tc.out) / "tokenizer.json"
    if tc.tokenizer:
        return load_tokenizer(tc.tokenizer)
    if saved.is_file():
        return load_tokenizer(saved)
    if tc.lm_checkpoint:
        raise SystemExit("train-flamingo: --lm-checkpoint needs the LM's own tokenizer: pass --tokenizer FILE")
    texts = list(iter_texts(shards, "interleaved", limit=200_000)) if shards else []
    if sum(len(t) for t in texts) >= 20_000:
        _say(f"no --tokenizer: training a {tc.vocab_size}-token BPE on {len(texts)} texts of the shards")
        tok = train_bpe(texts, tc.vocab_size)
    else:
        _say("no --tokenizer and too little text to train a BPE: using the byte-level tokenizer")
        tok = byte_tokenizer()
    return tok


def train(tc: TrainConfig) -> list[dict[str, Any]]:
    """Run (or resume) training; returns the logged records (also in ``<out>/metrics.jsonl``)."""
    import jax

    from model.data import DataConfig, Loader, list_shards, prefetch
    from model.sharding import parse_mesh

    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)

    # ----- Set up mesh -----
    mesh_shape = parse_mesh(tc.mesh)
    if tc.eval_every:
        check_eval(tc)

    # ----- Model config and tokenizer -----
    files = {d.name: list_shards(d.shards) for d in tc.datasets}
    interleaved = [f for d in tc.datasets if d.kind == "interleaved" for f in files[d.name]]
    tok = resolve_tokenizer(tc, interleaved)
    if jax.process_index() == 0:
        tok.save(out / "tokenizer.json")
    base_cfg = load_model_config(tc.model)
    pretrained = load_pretrained(tc)
    if "lm" in pretrained:
        base_cfg = dataclasses.replace(base_cfg, lm=pretrained["lm"][0])
    if "vision" in pretrained:
        base_cfg = dataclasses.replace(base_cfg, vision=pretrained["vision"][0])
    from_scratch = tc.lm_checkpoint is None
    train_lm = from_scratch if tc.train_lm is None else tc.train_lm
    if from_scratch:
        _say(f"no --lm-checkpoint: the {tc.model} language model is trained from scratch")
    if tc.vision_checkpoint is None:
        _say("no --vision-checkpoint: the vision encoder is randomly initialised and frozen")
    cfg = adapt_to_tokenizer(base_cfg, tok, from_scratch, mesh_shape["model"])
    if tc.precision:
        cfg = dataclasses.replace(cfg, dtype={"bf16": "bfloat16", "fp32": "float32"}[tc.precision])
    (out / "model_config.json").write_text(json.dumps(config_to_dict(cfg), indent=1))
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(tc), indent=1))

    # ----- Trainer, state, checkpoints -----
    trainer = get_trainer(cfg, tc, mesh_shape, [d.kind for d in tc.datasets], train_lm)
    _say(f"{trainer.n_params / 1e6:.2f}M parameters, {trainer.n_trainable / 1e6:.2f}M trained; mesh {mesh_shape}")
    mgr = checkpoint_manager(str(out / "checkpoints"), tc)
    positions = {d.name: 0 for d in tc.datasets}
    if mgr.latest_step() is not None:
        state, meta = restore_checkpoint(mgr, trainer.abstract_state, trainer.state_sharding)
        positions.update(meta["data"])
        _say(f"resumed from step {int(state['step'])}")
    else:
        state = trainer.init_state(tc.seed)
        if pretrained:
            state = merge_pretrained(state, trainer, {k: v[1] for k, v in pretrained.items()})
    start = int(state["step"])

    # ----- Data -----
    pcount, pindex = jax.process_count(), jax.process_index()
    loaders = {}
    for d in tc.datasets:
        if d.batch_size % (mesh_shape["data"]) or d.batch_size % pcount:
            raise SystemExit(f"train-flamingo: batch size {d.batch_size} of {d.name} must divide by data={mesh_shape['data']} and hosts={pcount}")
        dc = DataConfig(
            max_images=tc.max_images if d.kind == "interleaved" else 1,
            max_tokens=min(tc.max_tokens, cfg.lm.max_len),
            image_size=cfg.vision.image_size,
            frames=min(tc.frames, cfg.resampler.max_frames),
            shuffle_buffer=tc.shuffle_buffer,
            seed=tc.seed + 1000 * len(loaders),
            workers=tc.workers,
            image_cache=tc.image_cache,
        )
        loaders[d.name] = Loader(files[d.name], d.kind, tok, d.batch_size // pcount, dc, pindex, pcount, positions[d.name])
    streams = {n: prefetch(l.batches(), l.cfg.prefetch_batches) for n, l in loaders.items()}

    # ----- Logging -----
    logf = open(out / "metrics.jsonl", "a") if pindex == 0 else None
    tb = None
    if pindex == 0:
        from tensorboardX import SummaryWriter

        tb = SummaryWriter(str(out / "tensorboard"))
    bar = None
    if tc.progress and pindex == 0:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=start, desc="train", unit="step", file=sys.stderr)
    peak, peak_src = peak_flops_per_device(tc)
    records: list[dict[str, Any]] = []
    evaluator = periodic_eval(tc, cfg, tok, trainer.mesh) if tc.eval_every else None

    # ----- Train -----
    names = [d.name for d in tc.datasets]
    for step in range(start, tc.steps):
        t0 = time.perf_counter()
        use = names if tc.mixing == "accumulate" else [names[step % len(names)]]
        batches, tokens, images = [], 0, 0
        for n in names:
            if n in use:
                b, st = next(streams[n])
                positions[n] = st["position"]
                tokens += int(b["attention_mask"].sum()) * pcount
                images += int(b["num_images"].sum()) * pcount
                batches.append(trainer.put(b))
            else:
                batches.append(None)
        batches = tuple(batches)
        flops = trainer.step_flops(state, batches)
        state, metrics = trainer.step(state, batches)
        metrics = jax.device_get(metrics)
        dt = time.perf_counter() - t0
        rec = {"step": step + 1, **{k: float(v) for k, v in metrics.items()}}
        rec.update(step_time_s=dt, tokens_per_s=tokens / dt, images_per_s=images / dt)
        if flops:
            rec["mfu"] = flops / dt / (peak * jax.device_count())
        for n, l in loaders.items():
            for k, v in l.stats.items():
                if k.startswith("dropped_"):
                    rec[f"data/{n}/{k}"] = v
        records.append(rec)
        if logf and ((step + 1) % tc.log_every == 0 or step + 1 == tc.steps):
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            for k, v in rec.items():
                if k != "step":
                    tb.add_scalar(k, v, step + 1)
        if evaluator and (step + 1) % tc.eval_every == 0:
            ev = {"step": step + 1, **evaluator(state["params"], step + 1)}
            rec.update(ev)
            if logf:
                logf.write(json.dumps(ev) + "\n")
                logf.flush()
                for k, v in ev.items():
                    if k != "step":
                        tb.add_scalar(k, v, step + 1)
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
        if (step + 1) % tc.ckpt_every == 0 or step + 1 == tc.steps:
            save_checkpoint(mgr, step + 1, state, {"step": step + 1, "data": dict(positions)})
    for s in streams.values():
        s.close()  # stops the prefetch threads
    mgr.wait_until_finished()
    mgr.close()
    if bar:
        bar.close()
    if logf:
        logf.close()
        tb.close()
    if records:
        first, last = records[0], records[-1]
        mfu = f", MFU {last['mfu']:.3f} of {peak_src}" if "mfu" in last else ""
        _say(f"done: step {last['step']}, loss {first['loss']:.4f} at step {first['step']} -> {last['loss']:.4f}{mfu}")
    return records


def check_eval(tc: TrainConfig):
    """The tasks of ``--eval-task``, checked before any compiling or loading."""
    from model.eval.tasks import get_task

    if len(tc.eval_tasks) != len(tc.eval_data) or not tc.eval_tasks:
        raise ValueError("--eval-every needs --eval-task and one --eval-data folder per task")
    return [get_task(t) for t in tc.eval_tasks]


def periodic_eval(tc: TrainConfig, cfg, tok, mesh):
    """(params, step) -> {"eval/<task>/<k>shot/<metric>": value} on the first ``eval_samples``
    queries of each ``eval_tasks`` benchmark (random support, seeded; RICES features cached)."""
    from model.eval.evaluate import EvalConfig, Model, evaluate

    tasks = check_eval(tc)
    data_axis = mesh.shape["data"]
    ec = EvalConfig(shots=tuple(tc.eval_shots), batch_size=-(-8 // data_axis) * data_axis, seed=tc.seed,
                    max_samples=tc.eval_samples, progress=False)

    def run(params, step: int) -> dict[str, float]:
        model = Model(cfg, tok, params, mesh, name=f"{tc.out}@{step}")
        out: dict[str, float] = {}
        for task, data in zip(tasks, tc.eval_data):
            for shots, res in evaluate(model, task, data, ec).items():
                out.update({f"eval/{task.name}/{shots}shot/{k}": v for k, v in res["mean"].items()})
        _say(f"step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in out.items()))
        return out

    return run


def load_pretrained(tc: TrainConfig) -> dict[str, tuple[Any, dict]]:
    """{"lm": (LMConfig, params), "vision": (VisionConfig, params)} from local Hugging Face /
    OpenCLIP checkpoints (model/weights.py), for the ones given."""
    out: dict[str, tuple[Any, dict]] = {}
    if tc.lm_checkpoint or tc.vision_checkpoint:
        from model import weights

        if tc.lm_checkpoint:
            out["lm"] = weights.load_lm(tc.lm_checkpoint)
            _say(f"LM weights from {tc.lm_checkpoint}")
        if tc.vision_checkpoint:
            out["vision"] = weights.load_vision(tc.vision_checkpoint)
            _say(f"vision encoder weights from {tc.vision_checkpoint}")
    return out


def merge_pretrained(state, trainer: Trainer, subtrees: dict[str, dict]):
    """Overwrite ``params[name]``'s leaves present in ``subtrees[name]`` (shapes must agree) and
    re-place the parameters with their shardings; Flamingo's new leaves keep their init."""
    import jax

    params = jax.device_get(state["params"])

    def merge(cur: dict, new: dict, where: str) -> dict:
        out = dict(cur)
        for k, v in new.items():
            if k not in cur:
                raise ValueError(f"checkpoint has {where}/{k}, which the model does not")
            if isinstance(v, dict):
                out[k] = merge(cur[k], v, f"{where}/{k}")
            else:
                if tuple(np.shape(v)) != tuple(np.shape(cur[k])):
                    raise ValueError(f"{where}/{k}: checkpoint shape {np.shape(v)} != model {np.shape(cur[k])}")
                out[k] = np.asarray(v, dtype=cur[k].dtype)
        return out

    for name, tree in subtrees.items():
        params[name] = merge(params[name], tree, name)
    state["params"] = jax.device_put(params, trainer.param_sharding)
    return state


# ---------------------------------------------------------------------------------------------
# CLI


def _datasets_from_args(a) -> list[DatasetSpec]:
    ds = []
    weights = [float(w) for w in a.weights.split(",")] if a.weights else []
    for name, kind, src in (("m3w", "interleaved", a.shards), ("pairs", "pairs", a.pairs), ("videos", "videos", a.videos)):
        if src:
            w = weights[len(ds)] if len(ds) < len(weights) else 1.0
            ds.append(DatasetSpec(name=name, shards=src, kind=kind, weight=w, batch_size=a.batch_size))
    if not ds:
        raise SystemExit("train-flamingo: give --shards DIR (and optionally --pairs DIR, --videos DIR)")
    return ds


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train-flamingo", description="Train Flamingo on m3w shards.")
    p.add_argument("--shards", nargs="+",
                   help="interleaved shards: dirs, globs or files: m3w wds, MMC4 (.tar, .jsonl), OBELICS/m3w Parquet")
    p.add_argument("--image-cache", help="folder of image bytes for shards holding only URLs (docs/FORMATS.md)")
    p.add_argument("--pairs", nargs="+", help="image–text pair shards (<key>.jpg + <key>.txt)")
    p.add_argument("--videos", nargs="+", help="video–text shards (<key>.<frame>.jpg + <key>.txt)")
    p.add_argument("--weights", help="λ per dataset in the order m3w,pairs,videos (default 1 each)")
    p.add_argument("--mixing", choices=["accumulate", "round_robin"], default="accumulate")
    p.add_argument("--config", default="tiny", help="tiny|small|3b|9b|80b or a JSON/YAML file")
    p.add_argument("--mesh", default=None, help="e.g. data=4,model=2 (default: all devices on data)")
    p.add_argument("--rules", help="JSON list of [logical_name, mesh_axis|null] overriding the defaults")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8, help="global batch per dataset per step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: min(50, steps // 10)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lm-checkpoint")
    p.add_argument("--vision-checkpoint")
    p.add_argument("--tokenizer", help="tokenizer.json (default: train a BPE on --shards)")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--max-images", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--shuffle-buffer", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--peak-flops", type=float, help="per-device peak FLOP/s for MFU")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--eval-every", type=int, default=0, help="few-shot evaluation every N steps (0: never)")
    p.add_argument("--eval-task", help="task(s) to evaluate, comma-separated (see train-flamingo eval)")
    p.add_argument("--eval-data", help="benchmark folder(s), one per --eval-task, comma-separated")
    p.add_argument("--eval-shots", default="0", help="shot counts, comma-separated")
    p.add_argument("--eval-samples", type=int, default=64, help="queries per task and evaluation")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() (TPU pods / SLURM / env-configured clusters)")
    p.add_argument("--coordinator", help="host:port of process 0 (GPU clusters without auto-detection)")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("--out", required=True)
    return p


def _tokenizer_main(argv: list[str]) -> int:
    from model.data import iter_texts, list_shards
    from model.tokenizer import train_bpe

    p = argparse.ArgumentParser(prog="train-flamingo tokenizer", description="Train a byte-level BPE on m3w shards.")
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--max-texts", type=int, default=1_000_000)
    p.add_argument("--out", required=True, help="tokenizer.json to write")
    a = p.parse_args(argv)
    tok = train_bpe(iter_texts(list_shards(a.shards), "interleaved", limit=a.max_texts), a.vocab_size)
    tok.save(a.out)
    _say(f"wrote {a.out}: {tok.vocab_size} tokens (<image> {tok.image_id}, <|endofchunk|> {tok.eoc_id}, pad {tok.pad_id})")
    return 0


def load_run(run_dir: str, step: int | None = None, mesh_shape: dict[str, int] | None = None,
             with_trainer: bool = False):
    """(model config, tokenizer, params) of a training run folder (latest checkpoint by default),
    params laid out on a ``mesh_shape`` mesh as in training (default: one device); with
    ``with_trainer`` also the Trainer that holds the mesh and shardings."""
    import jax

    from model.sharding import make_mesh
    from model.tokenizer import load_tokenizer

    run = Path(run_dir)
    if not (run / "model_config.json").is_file():
        raise FileNotFoundError(f"{run} is not a training run folder (no model_config.json): pass the train --out folder")
    cfg = config_from_dict(json.loads((run / "model_config.json").read_text()))
    tc = TrainConfig.from_dict(json.loads((run / "train_config.json").read_text()))
    tok = load_tokenizer(run / "tokenizer.json")
    if mesh_shape is None:
        mesh = make_mesh({"data": 1, "model": 1}, jax.devices()[:1])
    else:
        n = mesh_shape["data"] * mesh_shape["model"]
        mesh = make_mesh(mesh_shape, jax.devices()[:n])
    tc.out = str(run)
    train_lm = tc.lm_checkpoint is None if tc.train_lm is None else tc.train_lm  # as train() decides it
    trainer = Trainer(cfg, dataclasses.replace(tc, rules=None), mesh, [d.kind for d in tc.datasets], train_lm)
    mgr = checkpoint_manager(str(run / "checkpoints"), tc)
    if mgr.latest_step() is None:
        raise SystemExit(f"train-flamingo: no checkpoint under {run / 'checkpoints'}")
    state, _ = restore_checkpoint(mgr, trainer.abstract_state, trainer.state_sharding, step)
    mgr.close()
    return (cfg, tok, state["params"], trainer) if with_trainer else (cfg, tok, state["params"])


def caption(run_dir: str, image_path: str, prompt: str = "", max_new_tokens: int = 20, beams: int = 1) -> str:
    """Caption one image with a trained run: ``<image>{prompt}`` then greedy (or beam) decoding."""
    import jax.numpy as jnp

    from model.data import DataConfig, load_image
    from model.flamingo import Flamingo

    cfg, tok, params = load_run(run_dir)
    dc = DataConfig(image_size=cfg.vision.image_size, random_crop=False, random_flip=False)
    px = load_image(Path(image_path).read_bytes(), dc.image_size, None, dc)
    images = normalize_images(jnp.asarray(px)[None, None, None], jnp.float32)  # [1, 1, 1, S, S, 3]
    ids = [tok.image_id] + tok.encode(prompt)
    stop = {tok.eoc_id, tok.pad_id} | ({tok.eot_id} if tok.eot_id is not None else set())
    from model import generate

    model = Flamingo(cfg)
    prompt = jnp.asarray([ids], jnp.int32)
    if beams > 1:
        out = generate.beam_search(model, params, images, prompt, max_new_tokens, tok.eoc_id, num_beams=beams)
    else:
        out = generate.greedy(model, params, images, prompt, max_new_tokens, tok.eoc_id)
    new = []
    for t in np.asarray(out)[0].tolist():
        if t in stop:
            break
        new.append(t)
    new = [t for t in new if t not in stop]
    return tok.decode(new).strip()


def _caption_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="train-flamingo caption", description="Caption an image with a trained run.")
    p.add_argument("--checkpoint", required=True, help="the run folder given to --out")
    p.add_argument("--image", required=True)
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--beams", type=int, default=1)
    a = p.parse_args(argv)
    print(caption(a.checkpoint, a.image, a.prompt, a.max_new_tokens, a.beams))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "tokenizer":
        return _tokenizer_main(argv[1:])
    if argv and argv[0] == "caption":
        return _caption_main(argv[1:])
    if argv and argv[0] == "eval":
        from model.eval.evaluate import main as eval_main

        return eval_main(argv[1:])
    a = _train_parser().parse_args(argv)
    if a.distributed or a.coordinator:
        import jax

        # TPU pods, SLURM and Open MPI are auto-detected; elsewhere pass the coordinator explicitly.
        jax.distributed.initialize(a.coordinator, a.num_processes, a.process_id)
    tc = TrainConfig(
        datasets=_datasets_from_args(a),
        out=a.out,
        model=a.config,
        steps=a.steps,
        mesh=a.mesh,
        rules=[tuple(r) for r in json.loads(a.rules)] if a.rules else None,
        mixing=a.mixing,
        lr=a.lr,
        warmup_steps=a.warmup_steps if a.warmup_steps is not None else min(50, max(1, a.steps // 10)),
        weight_decay=a.weight_decay,
        clip_norm=a.clip_norm,
        precision=a.precision,
        seed=a.seed,
        tokenizer=a.tokenizer,
        vocab_size=a.vocab_size,
        lm_checkpoint=a.lm_checkpoint,
        vision_checkpoint=a.vision_checkpoint,
        max_images=a.max_images,
        max_tokens=a.max_tokens,
        shuffle_buffer=a.shuffle_buffer,
        workers=a.workers,
        log_every=a.log_every,
        ckpt_every=a.ckpt_every,
        progress=not a.no_progress,
        peak_flops=a.peak_flops,
        eval_every=a.eval_every,
        eval_tasks=a.eval_task.split(",") if a.eval_task else [],
        eval_data=a.eval_data.split(",") if a.eval_data else [],
        eval_shots=[int(x) for x in a.eval_shots.split(",")],
        eval_samples=a.eval_samples,
        image_cache=a.image_cache,
    )
    try:
        train(tc)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"train-flamingo: {e}") from e
    return 0


if __name__ == "__main__":
    sys.exit(main())
