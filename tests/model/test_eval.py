"""Few-shot evaluation end to end on fixture sets in each benchmark's layout (real photos,
hand-written text): every task at 0 and 4 shots, RICES, seeding, sharded = single-device, the CLI.

One tiny checkpoint (random weights with open gates, so images matter) is saved as a training run
folder; XLA runs at a low optimisation level because compile time dominates for it.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tests.conftest import shared_path
from tests.model.conftest import need_devices

FAST = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def eight():
    return need_devices(8, "tests/model/test_eval.py")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    from tests.model.eval_fixtures import build

    return build(shared_path("images"), tmp_path_factory.mktemp("eval_data"))


@pytest.fixture(scope="module")
def run_dir(eight, tmp_path_factory):
    """A training run folder (configs, tokenizer, one orbax checkpoint) of a tiny model."""
    if not eight:
        return None
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from model.configs import get_config
    from model.flamingo import random_params
    from model.sharding import make_mesh
    from model.tokenizer import byte_tokenizer
    from model.train import (DatasetSpec, TrainConfig, Trainer, adapt_to_tokenizer, checkpoint_manager,
                             config_to_dict, save_checkpoint)

    out = tmp_path_factory.mktemp("run")
    tok = byte_tokenizer()
    tiny = get_config("tiny")
    cfg = tiny.replace(vision=dataclasses.replace(tiny.vision, n_layers=1),
                       resampler=dataclasses.replace(tiny.resampler, n_layers=1),
                       lm=dataclasses.replace(tiny.lm, n_layers=2, max_len=640))  # 4-shot byte-level prompts
    cfg = adapt_to_tokenizer(cfg, tok, from_scratch=True, model_axis=2)
    tc = TrainConfig(datasets=[DatasetSpec("m3w", [])], out=str(out), async_checkpoint=False, progress=False)
    trainer = Trainer(cfg, tc, make_mesh({"data": 1, "model": 1}, jax.devices()[:1]), ["interleaved"], True)
    state = trainer.init_state(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.ones_like(x) if getattr(path[-1], "key", "").endswith("_gate") else x,
        nn.unbox(random_params(cfg, std=0.1)))
    state["params"] = jax.device_put(params, trainer.param_sharding)
    tok.save(out / "tokenizer.json")
    (out / "model_config.json").write_text(json.dumps(config_to_dict(cfg)))
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(tc)))
    mgr = checkpoint_manager(str(out / "checkpoints"), tc)
    save_checkpoint(mgr, 1, state, {"step": 1, "data": {}})
    mgr.wait_until_finished()
    mgr.close()
    return out


def _ec(**kw):
    from model.eval.evaluate import EvalConfig

    base = dict(shots=(0, 4), batch_size=8, max_new_tokens=6, progress=False, compiler_options=FAST)
    return EvalConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def single(run_dir):
    if run_dir is None:
        return None
    from model.eval.evaluate import load_model

    return load_model(str(run_dir), "data=1,model=1")


@pytest.fixture(scope="module")
def all_results(single, fixtures, tmp_path_factory):
    if single is None:
        return None
    from model.eval.evaluate import evaluate
    from model.eval.tasks import TASKS

    out = tmp_path_factory.mktemp("results")
    return out, {name: evaluate(single, task, fixtures[name], _ec(), out) for name, task in TASKS.items()}


def test_every_task_runs_end_to_end_at_0_and_4_shots(all_results):
    if all_results is None:
        return
    from model.eval.evaluate import table

    out, results = all_results
    expect = {"coco": ["CIDEr"], "flickr30k": ["CIDEr"], "vqav2": ["VQA accuracy"], "okvqa": ["VQA accuracy"],
              "textvqa": ["VQA accuracy"], "vizwiz": ["VQA accuracy"], "hatefulmemes": ["ROC-AUC"],
              "imagenet": ["top-1", "top-5"]}
    for name, metric_names in expect.items():
        for shots in (0, 4):
            saved = json.loads((out / f"{name}_{shots}shot.json").read_text())
            assert saved == json.loads(json.dumps(results[name][shots]))
            assert list(saved["mean"]) == metric_names and saved["shots"] == shots
            assert all(0.0 <= v <= 100.0 for v in saved["mean"].values())
            assert len(saved["predictions"]) == saved["n_queries"] == (5 if name == "imagenet" else 4)
    # Open-ended outputs are decoded text; ImageNet has a score per class; memes a probability.
    assert all(isinstance(p["output"], str) for p in results["vqav2"][4]["predictions"])
    assert all(len(p["output"]) == 5 for p in results["imagenet"][4]["predictions"])
    assert all(0.0 <= p["output"] <= 1.0 for p in results["hatefulmemes"][0]["predictions"])
    # Five classes: the true class is always in the top 5.
    assert results["imagenet"][0]["mean"]["top-5"] == 100.0
    text = table({k: v for k, v in results.items()})
    assert text.splitlines()[0].split()[-2:] == ["0-shot", "4-shot"]
    assert any(line.startswith("imagenet") and "top-5" in line for line in text.splitlines())


def test_rices_returns_the_planted_near_duplicate_first(single, fixtures):
    if single is None:
        return
    from model.eval.evaluate import Images, Rices
    from model.eval.tasks import TASKS

    support, queries = TASKS["coco"].read(fixtures["coco"])
    cache = fixtures["coco"].parent / "rices_cache"
    images = Images(single.cfg.vision.image_size)
    rices = Rices(single, images, support, 8, str(cache))
    bridge = next(i for i, ex in enumerate(support) if ex.answers[0].startswith("A steel bridge"))
    query = next(ex for ex in queries if ex.answers[0].startswith("A bridge crossing"))
    assert rices.nearest([query], 4)[0][0] == bridge
    # The features were cached on disk and a second index reads them back.
    assert len(list(cache.glob("rices-*.npy"))) == 1
    again = Rices(single, images, support, 8, str(cache))
    assert again.nearest([query], 4) == rices.nearest([query], 4)


def test_the_same_seed_gives_the_same_results(single, fixtures, all_results):
    if single is None:
        return
    from model.eval.evaluate import evaluate, random_support
    from model.eval.tasks import TASKS

    _, results = all_results
    again = evaluate(single, TASKS["vqav2"], fixtures["vqav2"], _ec(shots=(4,)))
    assert again[4]["predictions"] == results["vqav2"][4]["predictions"]
    assert again[4]["mean"] == results["vqav2"][4]["mean"]
    assert random_support(8, 4, 4, 42, 0) == random_support(8, 4, 4, 42, 0)
    assert random_support(8, 4, 4, 42, 0) != random_support(8, 4, 4, 43, 0)
    assert all(len(set(s)) == 4 for s in random_support(8, 4, 4, 42, 1))


def test_sharded_eval_equals_single_device_eval(run_dir, single, fixtures, all_results):
    if single is None:
        return
    from model.eval.evaluate import evaluate, load_model
    from model.eval.tasks import TASKS

    _, results = all_results
    sharded = load_model(str(run_dir), "data=4,model=2")
    assert sharded.mesh.devices.size == 8
    for name in ("vqav2", "hatefulmemes"):
        got = evaluate(sharded, TASKS[name], fixtures[name], _ec(shots=(4,)))
        want = results[name][4]
        if name == "vqav2":
            assert got[4]["predictions"] == want["predictions"]
        else:
            np.testing.assert_allclose([p["output"] for p in got[4]["predictions"]],
                                       [p["output"] for p in want["predictions"]], atol=1e-5)
        for k, v in want["mean"].items():
            assert abs(got[4]["mean"][k] - v) < 1e-6


def test_eval_command_writes_results_and_prints_the_table(run_dir, fixtures, tmp_path, capsys):
    if run_dir is None:
        return
    from model.train import main

    out = tmp_path / "eval"
    args = ["eval", "--checkpoint", str(run_dir), "--task", "okvqa", "--data", str(fixtures["okvqa"]),
            "--shots", "0,4", "--rices", "--out", str(out), "--mesh", "data=1,model=1", "--max-new-tokens", "6",
            "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "okvqa" in printed and "VQA accuracy" in printed and "4-shot" in printed
    res = json.loads((out / "okvqa_4shot.json").read_text())
    assert res["selection"] == "rices" and res["n_queries"] == 4
    assert list((out / "rices_cache").glob("rices-*.npy"))
    with pytest.raises(SystemExit, match="one --data folder per --task"):
        main(["eval", "--checkpoint", str(run_dir), "--task", "okvqa,coco", "--data", str(fixtures["okvqa"])])
    with pytest.raises(SystemExit, match="unknown task"):
        main(["eval", "--checkpoint", str(run_dir), "--task", "mnist", "--data", str(fixtures["okvqa"])])


def test_training_evaluates_every_n_steps_next_to_the_loss(eight, corpus, fixtures, tmp_path):
    if not eight:
        return
    from model.tokenizer import byte_tokenizer
    from model.train import main

    tok = tmp_path / "tokenizer.json"
    byte_tokenizer().save(tok)
    out = tmp_path / "run"
    # The hyperparameters of test_train's command-line run: in one process the step compiles once.
    args = ["--shards", str(corpus["wds"]), "--config", "tiny", "--mesh", "data=4,model=2", "--steps", "2",
            "--batch-size", "8", "--max-tokens", "64", "--lr", "3e-3", "--warmup-steps", "1", "--shuffle-buffer", "8",
            "--tokenizer", str(tok), "--no-progress", "--out", str(out), "--eval-every", "2",
            "--eval-task", "vqav2", "--eval-data", str(fixtures["vqav2"]), "--eval-samples", "4"]
    with pytest.raises(SystemExit, match="one --eval-data folder per task"):
        main(args[:-4] + ["--eval-task", "vqav2,coco"])
    assert main(args) == 0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "eval/vqav2/0shot/VQA accuracy" in r]
    assert [r["step"] for r in evals] == [2]
    assert 0 <= evals[0]["eval/vqav2/0shot/VQA accuracy"] <= 100
    assert [r["step"] for r in recs if "loss" in r] == [1, 2]
