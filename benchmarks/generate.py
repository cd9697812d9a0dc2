"""KV-cached decoding against recomputing the whole sequence at every step, same process.

    .venv/bin/python -m benchmarks.generate [--config small] [--batch 4] [--prompt 32] [--new 32] [--repeat 3]

Both decode greedily from the same images and prompt with the same parameters (random, host
made) and must produce the same tokens. Cached: `model.generate.greedy` (prompt once, then one
token per step against the KV cache; one jitted program). Anchor: the same loop without a cache —
each step runs the LM over the full fixed-size buffer [B, prompt + new] (causal mask, so later
slots do not matter) with the visual tokens precomputed; one jitted `fori_loop`. Figures are best
CPU time (`time.process_time`) of `--repeat` runs after compilation; the load average is printed
beside them because the machine is shared.
"""
from __future__ import annotations

import argparse
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from model.configs import get_config
from model.flamingo import Flamingo, random_params
from model.generate import greedy


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.process_time()
        jax.block_until_ready(fn())
        times.append(time.process_time() - t)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="small")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    cfg = get_config(args.config)
    params = nn.unbox(random_params(cfg, std=0.05))
    model = Flamingo(cfg)
    b, lp, n = args.batch, args.prompt, args.new
    s = cfg.vision.image_size
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((b, 1, 1, s, s, 3)), jnp.float32)
    prompt = rng.integers(10, cfg.lm.vocab_size, (b, lp)).astype(np.int32)
    prompt[:, 0] = cfg.media_token_id
    prompt = jnp.asarray(prompt)
    eos = -1  # never produced: both sides decode all `new` tokens

    def cached():
        return greedy(model, params, images, prompt, n, eos)

    @jax.jit
    def uncached(params, images, prompt):
        visual = model.apply({"params": params}, images, method=Flamingo.encode_media)
        buf = jnp.concatenate([prompt, jnp.zeros((b, n), jnp.int32)], axis=1)

        def step(t, buf):
            logits, _ = model.apply({"params": params}, visual, buf, method=Flamingo.decode)
            tok = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, lp - 1 + t, axis=1, keepdims=False), -1)
            return jax.lax.dynamic_update_index_in_dim(buf, tok.astype(jnp.int32), lp + t, axis=1)

        return jax.lax.fori_loop(0, n, step, buf)[:, lp:]

    t = time.process_time()
    got = np.asarray(cached())
    compile_cached = time.process_time() - t
    t = time.process_time()
    ref = np.asarray(uncached(params, images, prompt))
    compile_uncached = time.process_time() - t
    assert got.tolist() == ref.tolist(), "cached and uncached decoding disagree"

    tc = _best(cached, args.repeat)
    tu = _best(lambda: uncached(params, images, prompt), args.repeat)
    toks = b * n
    print(f"config={args.config} batch={b} prompt={lp} new={n} load_avg={os.getloadavg()[0]:.1f}")
    print(f"first call (compile + run) CPU s: cached {compile_cached:.1f}, uncached {compile_uncached:.1f}")
    print(f"cached greedy:   {tc:.3f} CPU s  {toks / tc:8.1f} tokens/s")
    print(f"uncached anchor: {tu:.3f} CPU s  {toks / tu:8.1f} tokens/s")
    print(f"speed-up of the KV cache: {tu / tc:.2f}x")


if __name__ == "__main__":
    main()
