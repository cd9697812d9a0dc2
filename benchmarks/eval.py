"""Few-shot evaluation throughput against a plain forward loop over the same batches, same process.

    .venv/bin/python -m benchmarks.eval [--config small] [--task vqav2] [--shots 0,4] [--repeat 2]

Builds the fixture sets of tests/model/eval_fixtures.py (real photos from ../shared/data/images)
in a temporary folder and evaluates a randomly initialised model on one task. Measured: the whole
`model.eval.evaluate.evaluate` call (image decoding, prompts, beam search with 3 beams or
candidate scoring, the metric) in samples/s. Anchor: one jitted forward pass of the model over the
same padded prompt batches and images (what a loss evaluation would cost), in samples/s. Figures are
the best wall time of `--repeat` runs after a first run that compiles; the load average is printed
beside them because the machine is shared.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

from model.configs import get_config
from model.eval.evaluate import EvalConfig, Images, Model, _left_pad, evaluate, prompt_ids, random_support
from model.eval.tasks import get_task
from model.flamingo import Flamingo, random_params
from model.sharding import make_mesh
from model.tokenizer import byte_tokenizer
from model.train import adapt_to_tokenizer, normalize_images


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    from tests.conftest import SHARED_DATA
    from tests.model.eval_fixtures import build

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="small")
    ap.add_argument("--task", default="vqav2")
    ap.add_argument("--shots", default="0,4")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)

    tok = byte_tokenizer()
    cfg = adapt_to_tokenizer(get_config(args.config), tok, from_scratch=False)  # keeps the preset's vocabulary
    params = nn.unbox(random_params(cfg, std=0.05))
    model = Model(cfg, tok, params, make_mesh({"data": 1, "model": 1}, jax.devices()[:1]), name="bench")
    task = get_task(args.task)
    flamingo = Flamingo(cfg)
    forward = jax.jit(lambda p, x, ids, m: flamingo.apply({"params": p}, x, ids, attention_mask=m))
    print(f"{args.config}: {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.1f}M parameters, task {task.name}, "
          f"{jax.devices()[0].device_kind}, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        data = build(SHARED_DATA / "images", Path(tmp))[task.name]
        support, queries = task.read(data)
        bs = len(queries)
        images = Images(cfg.vision.image_size)
        print("| shots | queries | eval samples/s | forward samples/s (anchor) | eval / anchor |")
        print("|---|---|---|---|---|")
        for shots in (int(s) for s in args.shots.split(",")):
            ec = EvalConfig(shots=(shots,), batch_size=bs, progress=False)
            run = lambda: evaluate(model, task, data, ec)
            run()  # compiles
            t_eval = _best(run, args.repeat)
            chosen = random_support(len(support), len(queries), shots, ec.seed, 0) if shots else [[] for _ in queries]
            rows = [prompt_ids(task, tok, [support[j] for j in c], q) for c, q in zip(chosen, queries)]
            ids, mask = _left_pad(rows, tok.pad_id, 32)
            px = np.stack([np.stack([images.get(support[j].image) for j in c] + [images.get(q.image)])
                           for c, q in zip(chosen, queries)])[:, :, None]
            x = normalize_images(jax.numpy.asarray(px), np.float32)
            fwd = lambda: forward(params, x, ids, mask)
            fwd()
            t_fwd = _best(fwd, args.repeat)
            n = len(queries)
            print(f"| {shots} | {n} | {n / t_eval:.2f} | {n / t_fwd:.2f} | {t_fwd / t_eval:.3f} |")
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
