"""Few-shot evaluation: support selection (seeded random or RICES), prompt batches, beam search or
log-likelihood ranking, metrics averaged over trials, results JSON and the paper-style table.

The model runs on a (data, model) mesh like training: parameters keep their training layout and
each batch is split over ``data``, so many devices give the single-device results. Every query's
support set depends only on (seed, trial, query index), never on the batch it lands in.
"""
from __future__ import annotations

import functools
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.eval.tasks import Example, Task, imagenet_classes, score_task

PAD_TO = 32  # prompt lengths are padded to a multiple of this, so few shapes compile


@dataclass
class EvalConfig:
    shots: tuple[int, ...] = (0, 4, 8, 16, 32)
    rices: bool = False
    trials: int = 1
    seed: int = 42
    batch_size: int = 8  # global; a multiple of the mesh's data axis
    num_beams: int = 3  # the paper's setting
    max_new_tokens: int | None = None  # None: the task's (OpenFlamingo's lengths)
    max_samples: int | None = None  # score only the first N queries (quick checks)
    cache_dir: str | None = None  # RICES features; None: no disk cache
    progress: bool = True
    compiler_options: dict | None = None


class Model:
    """Parameters on a mesh plus the tokenizer: what the evaluation needs from a checkpoint."""

    def __init__(self, cfg, tok, params, mesh, name: str = ""):
        from model.flamingo import Flamingo

        self.cfg, self.tok, self.params, self.mesh, self.name = cfg, tok, params, mesh, name
        self.flamingo = Flamingo(cfg)
        self.stop = {tok.eoc_id, tok.pad_id} | ({tok.eot_id} if tok.eot_id is not None else set())

    def put(self, x):
        """A host batch split over ``data``."""
        import jax
        from jax.sharding import NamedSharding, PartitionSpec as P

        return jax.device_put(x, NamedSharding(self.mesh, P("data")))

    @functools.cached_property
    def _features(self):
        import jax

        from model.train import normalize_images

        def f(params, px):
            x = normalize_images(px, np.float32)
            return self.flamingo.apply({"params": params}, x, method=lambda m, im: m.vision.pooled(im))
        return jax.jit(f)

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        """Frozen vision encoder's pooled features of uint8 [N, S, S, 3] -> float32 [N, d]."""
        import jax

        with jax.set_mesh(self.mesh):
            return np.asarray(jax.device_get(self._features(self.params, self.put(pixels))), np.float32)


class Images:
    """Decoded, resized images by path (centre crop, as the model was trained), kept in memory
    up to a bound so a support example used by many queries is decoded once."""

    def __init__(self, size: int, keep: int = 4096):
        from model.data import DataConfig

        self.size, self.dc = size, DataConfig(image_size=size, random_crop=False, random_flip=False)
        self.get = functools.lru_cache(maxsize=keep)(self._load)

    def _load(self, path: Path) -> np.ndarray:
        from model.data import load_image

        return load_image(Path(path).read_bytes(), self.size, None, self.dc)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, disable=not (enabled and sys.stderr.isatty()))


# --- support selection ----------------------------------------------------------------------


def random_support(n_support: int, n_queries: int, shots: int, seed: int, trial: int) -> list[list[int]]:
    """``shots`` distinct support indices per query, from a generator seeded by (seed, trial, query)."""
    return [np.random.default_rng([seed, trial, q]).choice(n_support, shots, replace=False).tolist()
            for q in range(n_queries)]


class Rices:
    """Retrieval-based in-context example selection: the support examples whose image features
    (frozen vision encoder, cosine similarity, FAISS inner-product index) are nearest the query's."""

    def __init__(self, model: Model, images: Images, support: list[Example], batch_size: int,
                 cache_dir: str | None = None, progress: bool = False):
        import faiss

        self.model, self.images, self.batch_size = model, images, batch_size
        feats = self._cached(support, cache_dir, progress)
        self.index = faiss.IndexFlatIP(feats.shape[1])
        self.index.add(feats)

    def features(self, examples: list[Example], progress: bool = False) -> np.ndarray:
        out = []
        bs = self.batch_size
        with _bar(len(examples), "rices features", progress) as bar:
            for i in range(0, len(examples), bs):
                chunk = examples[i:i + bs]
                px = np.stack([self.images.get(ex.image) for ex in chunk])
                pad = bs - len(chunk)  # fixed shape: one compile
                px = np.concatenate([px, np.repeat(px[:1], pad, 0)]) if pad else px
                out.append(self.model.image_features(px)[:len(chunk)])
                bar.update(len(chunk))
        f = np.concatenate(out).astype(np.float32)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    def _cached(self, support: list[Example], cache_dir: str | None, progress: bool) -> np.ndarray:
        if not cache_dir:
            return self.features(support, progress)
        key = hashlib.sha256(json.dumps([self.model.name, [str(ex.image) for ex in support]]).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"rices-{key}.npy"
        if path.exists():
            return np.load(path)
        feats = self.features(support, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, feats)
        tmp.replace(path)
        return feats

    def nearest(self, queries: list[Example], k: int) -> list[list[int]]:
        """Per query, the k most similar support indices, most similar first."""
        _, idx = self.index.search(self.features(queries), k)
        return idx.tolist()


# --- prompts and batches --------------------------------------------------------------------


def prompt_ids(task: Task, tok, support: list[Example], query: Example, class_names=None) -> list[int]:
    """``<image>{support text}<|endofchunk|>`` per support example, then ``<image>{query text}``."""
    ids: list[int] = []
    for ex in support:
        ids += [tok.image_id] + tok.encode(task.query_text(ex) + task.answer_text(ex, class_names)) + [tok.eoc_id]
    return ids + [tok.image_id] + tok.encode(task.query_text(query))


def _left_pad(rows: list[list[int]], pad_id: int, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    n = max(len(r) for r in rows)
    n = -(-n // multiple) * multiple
    ids = np.full((len(rows), n), pad_id, np.int32)
    mask = np.zeros((len(rows), n), bool)
    for i, r in enumerate(rows):
        ids[i, n - len(r):] = r
        mask[i, n - len(r):] = True
    return ids, mask


def _decode(model: Model, seq) -> str:
    out = []
    for t in seq:
        if t in model.stop:
            break
        out.append(int(t))
    return model.tok.decode(out)


# --- the loop -------------------------------------------------------------------------------


def run_shots(model: Model, task: Task, support: list[Example], queries: list[Example], shots: int,
              ec: EvalConfig, images: Images, rices: Rices | None, trial: int, class_names=None) -> list:
    """Outputs for every query at ``shots`` in-context examples (one trial)."""
    import jax

    from model import generate
    from model.train import normalize_images

    if shots > len(support):
        raise ValueError(f"{shots} shots need {shots} support examples; {task.name} has {len(support)}")
    if shots == 0:
        chosen = [[] for _ in queries]
    elif rices is not None:
        chosen = [list(reversed(r)) for r in rices.nearest(queries, shots)]  # most similar last
    else:
        chosen = random_support(len(support), len(queries), shots, ec.seed, trial)
    tok, bs = model.tok, ec.batch_size
    max_new = ec.max_new_tokens or task.max_new_tokens
    cands = None
    if not task.open_ended:
        names = ["yes", "no"] if task.kind == "hateful" else class_names
        cands = [tok.encode(n) + [tok.eoc_id] for n in names]
    outputs: list = []
    opts = ec.compiler_options
    with _bar(len(queries), f"{task.name} {shots}-shot", ec.progress) as bar:
        for i in range(0, len(queries), bs):
            qs = list(range(i, min(i + bs, len(queries))))
            qs_full = qs + [qs[-1]] * (bs - len(qs))  # the last batch repeats its last row: one shape
            rows = [prompt_ids(task, tok, [support[j] for j in chosen[q]], queries[q], class_names) for q in qs_full]
            ids, mask = _left_pad(rows, tok.pad_id, PAD_TO)
            extra = max_new if task.open_ended else max(len(c) for c in cands)
            if ids.shape[1] + extra > model.cfg.lm.max_len:
                raise ValueError(f"{task.name} at {shots} shots needs {ids.shape[1] + extra} tokens; the model's "
                                 f"max_len is {model.cfg.lm.max_len}: use fewer --shots")
            px = np.stack([np.stack([images.get(support[j].image) for j in chosen[q]] + [images.get(queries[q].image)])
                           for q in qs_full])[:, :, None]  # [B, shots + 1, T=1, S, S, 3]
            with jax.set_mesh(model.mesh):
                x = normalize_images(model.put(px), np.float32)
                ids_d, mask_d = model.put(ids), model.put(mask)
                if task.open_ended:
                    out = generate.beam_search(model.flamingo, model.params, x, ids_d, max_new, tok.eoc_id,
                                               num_beams=ec.num_beams, attention_mask=mask_d, compiler_options=opts)
                else:
                    out = generate.score(model.flamingo, model.params, x, ids_d, cands, attention_mask=mask_d,
                                         compiler_options=opts)
            out = np.asarray(jax.device_get(out))[:len(qs)]
            if task.open_ended:
                outputs += [task.postprocess(_decode(model, s)) for s in out]
            elif task.kind == "hateful":  # p(yes) among {yes, no}
                outputs += [float(1 / (1 + np.exp(s[1] - s[0]))) for s in out]
            else:
                outputs += [s.astype(float).tolist() for s in out]
            bar.update(len(qs))
    return outputs


def evaluate(model: Model, task: Task, data: str | Path, ec: EvalConfig, out: str | Path | None = None) -> dict[int, dict]:
    """Every shot count of ``ec.shots`` on one task: {shots: result}; each result is also written
    to ``out/<task>_<shots>shot.json`` when ``out`` is given."""
    data = Path(data)
    support, queries = task.read(data)
    if ec.max_samples:
        queries = queries[:ec.max_samples]
    if not queries:
        raise ValueError(f"no {task.name} queries under {data}")
    class_names = imagenet_classes(data)[1] if task.kind == "classify" else None
    images = Images(model.cfg.vision.image_size)
    rices = None
    if ec.rices and any(ec.shots):
        rices = Rices(model, images, support, ec.batch_size, ec.cache_dir, ec.progress)
    trials = 1 if ec.rices else ec.trials  # RICES picks the same support set every trial
    results = {}
    for shots in ec.shots:
        per_trial, first_outputs = [], None
        for trial in range(trials if shots else 1):  # 0 shots: nothing to draw, every trial is the same
            outputs = run_shots(model, task, support, queries, shots, ec, images, rices, trial, class_names)
            per_trial.append(score_task(task, queries, outputs))
            first_outputs = first_outputs if first_outputs is not None else outputs
        mean = {k: float(np.mean([t[k] for t in per_trial])) for k in per_trial[0]}
        res = {"task": task.name, "shots": shots, "selection": "rices" if ec.rices else "random",
               "trials": len(per_trial), "seed": ec.seed, "n_queries": len(queries), "n_support": len(support),
               "checkpoint": model.name, "metric": task.metric, "mean": mean, "per_trial": per_trial,
               "predictions": [{"id": ex.id, "output": o} for ex, o in zip(queries, first_outputs)]}
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / f"{task.name}_{shots}shot.json").write_text(json.dumps(res, indent=1) + "\n")
        results[shots] = res
    return results


def table(results: dict[str, dict[int, dict]]) -> str:
    """The paper's layout: a row per task (and metric), a column per shot count."""
    shots = sorted({s for r in results.values() for s in r})
    head = f"{'task':<14}{'metric':<14}" + "".join(f"{str(s) + '-shot':>10}" for s in shots)
    lines = [head, "-" * len(head)]
    for name, by_shot in results.items():
        metrics_ = list(next(iter(by_shot.values()))["mean"])
        for m in metrics_:
            cells = "".join(f"{by_shot[s]['mean'][m]:>10.1f}" if s in by_shot else f"{'':>10}" for s in shots)
            lines.append(f"{name:<14}{m:<14}{cells}")
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------


def load_model(checkpoint: str, mesh: str | None = None, step: int | None = None) -> Model:
    """A training run folder's latest (or ``step``) checkpoint, laid out on the ``--mesh``."""
    from model.sharding import parse_mesh
    from model.train import load_run

    mesh_shape = parse_mesh(mesh)
    cfg, tok, params, trainer = load_run(checkpoint, step, mesh_shape=mesh_shape, with_trainer=True)
    return Model(cfg, tok, params, trainer.mesh, name=f"{Path(checkpoint).resolve()}@{step or 'latest'}")


def main(argv: list[str]) -> int:
    import argparse

    from model.eval.tasks import TASKS, get_task

    p = argparse.ArgumentParser(prog="train-flamingo eval", description="Few-shot evaluation of a trained run.")
    p.add_argument("--checkpoint", required=True, help="the run folder given to train --out")
    p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    p.add_argument("--task", required=True, help=f"one or more of {','.join(TASKS)} (comma-separated)")
    p.add_argument("--data", required=True, help="the benchmark's folder (comma-separated, one per task)")
    p.add_argument("--shots", default="0,4,8,16,32")
    p.add_argument("--rices", action="store_true", help="support examples by image similarity (default: random)")
    p.add_argument("--trials", type=int, default=1, help="random selections averaged")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--max-samples", type=int, help="score only the first N queries")
    p.add_argument("--mesh", help="e.g. data=4,model=2, as for training (default: all devices on data)")
    p.add_argument("--out", help="folder for <task>_<shots>shot.json and the RICES feature cache")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    names, datas = a.task.split(","), a.data.split(",")
    if len(names) != len(datas):
        raise SystemExit("train-flamingo eval: give one --data folder per --task (comma-separated, same order)")
    try:
        tasks = [get_task(n) for n in names]
        shots = tuple(int(s) for s in a.shots.split(","))
        model = load_model(a.checkpoint, a.mesh, a.step)
        data_axis = model.mesh.shape["data"]
        if a.batch_size % data_axis:
            raise ValueError(f"--batch-size {a.batch_size} must divide by the mesh's data axis ({data_axis})")
        ec = EvalConfig(shots=shots, rices=a.rices, trials=a.trials, seed=a.seed, batch_size=a.batch_size,
                        num_beams=a.num_beams, max_new_tokens=a.max_new_tokens, max_samples=a.max_samples,
                        cache_dir=str(Path(a.out) / "rices_cache") if a.out else None, progress=not a.no_progress)
        results = {t.name: evaluate(model, t, d, ec, a.out) for t, d in zip(tasks, datas)}
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SystemExit(f"train-flamingo eval: {e}") from e
    print(table(results))
    return 0
