"""Trainer throughput: tokens/s of the `small` config, FLOP/s against a plain matmul, loader headroom.

    .venv/bin/python -m benchmarks.train [--steps 5] [--batch 8] [--tokens 256]

Anchors, measured in the same process:
* achieved FLOP/s of the training step (XLA's FLOP count of the compiled step / step time) as a
  fraction of a plain 2048×2048 fp32 ``jnp.dot``'s FLOP/s (target ≥ 0.3 on CPU);
* loader samples/s (decode, augment, tokenize; real photos and article text) as a multiple of the
  samples/s one training step consumes (target ≥ 3).
Needs ../shared/data (real photos and texts for the shards).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="small")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)

    import jax
    import numpy as np

    from model.configs import get_config
    from model.data import DataConfig, Loader, list_shards, write_wds_shard
    from model.sharding import make_mesh
    from model.tokenizer import byte_tokenizer
    from model.train import DatasetSpec, Trainer, TrainConfig, adapt_to_tokenizer, matmul_flops_per_s
    from tests.model.conftest import make_documents

    tok = byte_tokenizer()
    # Keep the preset's vocabulary (8192) so the output layer costs what it would with a real tokenizer.
    cfg = adapt_to_tokenizer(get_config(a.config), tok, from_scratch=False)
    tmp = tempfile.mkdtemp(prefix="bench-train-")
    docs = make_documents(60, images_per_doc=5)
    for s in range(4):
        write_wds_shard(os.path.join(tmp, f"s{s}.tar"), docs[s::4])
    files = list_shards(tmp)
    dc = DataConfig(image_size=cfg.vision.image_size, max_tokens=a.tokens, shuffle_buffer=16, workers=a.workers)

    # ----- Loader throughput -----
    loader = Loader(files, "interleaved", tok, a.batch, dc)
    it = iter(loader)
    next(it)  # warm-up: file open, thread pool
    t = time.perf_counter()
    n_batches = 10
    batches = [next(it) for _ in range(n_batches)]
    loader_sps = n_batches * a.batch / (time.perf_counter() - t)

    # ----- Training step (one device: XLA:CPU spreads each op over the host's cores) -----
    tc = TrainConfig(datasets=[DatasetSpec("m3w", files, batch_size=a.batch)], out=tmp, lr=1e-4, warmup_steps=10)
    trainer = Trainer(cfg, tc, make_mesh({"data": 1, "model": 1}, jax.devices()[:1]), ["interleaved"], train_lm=True)
    state = trainer.init_state(0)
    placed = [(trainer.put(b),) for b in batches]
    t = time.perf_counter()
    exe, flops = trainer.compiled(state, placed[0])
    compile_s = time.perf_counter() - t
    state, m = trainer.step(state, placed[0])
    jax.block_until_ready(m)
    times = []
    for b in itertools.islice(itertools.cycle(placed[1:]), a.steps):
        t = time.perf_counter()
        state, m = trainer.step(state, b)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    dot = matmul_flops_per_s()
    tokens = a.batch * a.tokens
    out = {
        "config": a.config,
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "params_M": round(trainer.n_params / 1e6, 2),
        "trained_params_M": round(trainer.n_trainable / 1e6, 2),
        "batch": a.batch,
        "tokens_per_sample": a.tokens,
        "compile_s": round(compile_s, 1),
        "step_s": round(step_s, 3),
        "tokens_per_s": round(tokens / step_s, 1),
        "step_gflop": round((flops or 0) / 1e9, 2),
        "step_gflop_per_s": round((flops or 0) / step_s / 1e9, 2),
        "dot_gflop_per_s": round(dot / 1e9, 2),
        "flops_fraction_of_dot": round((flops or 0) / step_s / dot, 3),
        "loader_samples_per_s": round(loader_sps, 1),
        "step_samples_per_s": round(a.batch / step_s, 1),
        "loader_headroom": round(loader_sps / (a.batch / step_s), 2),
        "final_loss": float(m["loss"]),
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
