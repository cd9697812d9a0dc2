"""The trainer on 8 simulated CPU devices: sharded = single-device, ZeRO-1, exact resume, overfitting,
and the ``train-flamingo`` command line end to end.

All tests share one tiny model and one batch shape, so each step function compiles once.
"""
from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from tests.model.conftest import need_devices

BATCH, TOKENS = 8, 64
HYPER = dict(lr=3e-3, warmup_steps=1, max_tokens=TOKENS, shuffle_buffer=8, workers=2, progress=False)


@pytest.fixture(scope="module")
def eight(request):
    """False when this process lacks 8 devices: the module then ran, and passed, in a subprocess."""
    return need_devices(8, "tests/model/test_train.py")


@pytest.fixture(scope="module")
def setup(eight, corpus, tmp_path_factory):
    if not eight:
        return None
    import jax

    from model.configs import get_config
    from model.data import DataConfig, Loader, list_shards
    from model.sharding import make_mesh
    from model.tokenizer import byte_tokenizer
    from model.train import DatasetSpec, Trainer, TrainConfig, adapt_to_tokenizer, get_trainer

    tok = byte_tokenizer()
    tok_path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(tok_path)
    cfg = adapt_to_tokenizer(get_config("tiny"), tok, from_scratch=True, model_axis=2)
    tc = TrainConfig(datasets=[DatasetSpec("m3w", [str(corpus["wds"])], batch_size=BATCH)], out="", **HYPER)
    # The same key train() uses, so the CLI and resume runs below reuse this compiled step.
    sharded = get_trainer(cfg, tc, {"data": 4, "model": 2}, ["interleaved"], True)
    single = Trainer(cfg, tc, make_mesh({"data": 1, "model": 1}, jax.devices()[:1]), ["interleaved"], True)
    dc = DataConfig(image_size=cfg.vision.image_size, max_tokens=TOKENS, shuffle_buffer=8, seed=1)
    batches = list(itertools.islice(iter(Loader(list_shards(corpus["wds"]), "interleaved", tok, BATCH, dc)), 2))
    host_state = jax.device_get(single.init_state(0))
    return dict(tok=tok, tok_path=tok_path, cfg=cfg, tc=tc, sharded=sharded, single=single, batches=batches,
                host_state=host_state)


def _max_diff(a, b) -> float:
    import jax

    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_sharded_step_equals_single_device_step(setup):
    if setup is None:
        return
    import jax

    s1, s8 = setup["single"], setup["sharded"]
    st1 = jax.device_put(setup["host_state"], s1.state_sharding)
    st8 = jax.device_put(setup["host_state"], s8.state_sharding)
    for batch in setup["batches"]:  # two updates, so Adam's moments from step 1 matter in step 2
        st1, m1 = s1.step(st1, (s1.put(batch),))
        st8, m8 = s8.step(st8, (s8.put(batch),))
        assert abs(float(m1["loss"]) - float(m8["loss"])) < 1e-5
    # Adam divides each gradient entry by its own scale, so an entry whose gradient is at rounding
    # level (a unit no token activates) may move by a fraction of lr in one layout and not the other;
    # a layout bug moves whole tensors by lr or more.
    assert _max_diff(jax.device_get(st1["params"]), jax.device_get(st8["params"])) < 0.1 * HYPER["lr"]
    assert int(st8["step"]) == 2
    # Params really are split over the model axis (Megatron): the LM's MLP input kernel.
    fc1 = st8["params"]["lm"]["layers_0"]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.spec[1] == "model" and fc1.addressable_shards[0].data.shape[1] == fc1.shape[1] // 2


def test_zero1_each_device_holds_a_quarter_of_the_optimizer_state(setup):
    if setup is None:
        return
    import jax
    from jax.sharding import NamedSharding

    from model.sharding import state_bytes_per_device

    s8 = setup["sharded"]
    st8 = jax.device_put(setup["host_state"], s8.state_sharding)
    opt = st8["opt_state"]
    with_zero = state_bytes_per_device(opt)
    # The same state laid out like the parameters (Megatron only, no ZeRO) for comparison.
    param_like = jax.tree.map(
        lambda x, s: jax.device_put(x, NamedSharding(s.mesh, _strip_data(s.spec))), opt, s8.opt_sharding
    )
    without = state_bytes_per_device(param_like)
    assert len(with_zero) == 8
    for dev, nbytes in with_zero.items():
        assert 0.2 <= nbytes / without[dev] <= 0.3, (dev, nbytes, without[dev])
    # Frozen parameters (the vision encoder here) carry no optimizer state: 2 moments per trained value.
    n_state = sum(x.size for x in jax.tree.leaves(opt) if np.issubdtype(x.dtype, np.floating))
    assert n_state == 2 * s8.n_trainable


def _strip_data(spec):
    from jax.sharding import PartitionSpec as P

    def drop(e):
        if e == "data":
            return None
        if isinstance(e, tuple):
            rest = tuple(a for a in e if a != "data")
            return rest[0] if len(rest) == 1 else (rest or None)
        return e

    return P(*[drop(e) for e in spec])


def test_overfitting_one_batch_drives_the_loss_below_a_tenth(setup):
    if setup is None:
        return
    import jax

    s1 = setup["single"]
    st = jax.device_put(setup["host_state"], s1.state_sharding)
    batch = s1.put(setup["batches"][0])
    losses = []
    for _ in range(400):
        st, m = s1.step(st, (batch,))
        losses.append(float(m["loss"]))
        if losses[-1] < 0.1 * losses[0]:
            break
    assert losses[-1] < 0.1 * losses[0], losses[::20]


def _run(setup, out, steps, **kw):
    from model.train import TrainConfig, train

    tc = dataclasses.replace(setup["tc"], out=str(out), steps=steps, mesh="data=4,model=2",
                             tokenizer=str(setup["tok_path"]), ckpt_every=kw.pop("ckpt_every", 100), **kw)
    return train(tc)


def test_kill_and_resume_gives_the_uninterrupted_losses(setup, tmp_path):
    if setup is None:
        return
    straight = _run(setup, tmp_path / "a", 6)
    _run(setup, tmp_path / "b", 3)  # stops after step 3 (its last checkpoint)
    resumed = _run(setup, tmp_path / "b", 6)
    assert [r["step"] for r in resumed] == [4, 5, 6]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight[3:]]
    logged = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]


def test_cli_trains_logs_and_captions(setup, tmp_path, capsys, corpus):
    if setup is None:
        return
    from model.train import main

    out = tmp_path / "run"
    args = ["--shards", str(corpus["wds"]), "--config", "tiny", "--mesh", "data=4,model=2", "--steps", "2",
            "--batch-size", str(BATCH), "--max-tokens", str(TOKENS), "--lr", "3e-3", "--warmup-steps", "1",
            "--shuffle-buffer", "8", "--tokenizer", str(setup["tok_path"]), "--no-progress", "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "trained from scratch" in err
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    for r in recs:
        assert np.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and r["images_per_s"] > 0 and "loss/m3w" in r
    assert list((out / "tensorboard").iterdir())
    from tests.conftest import shared_path

    image = shared_path("images", "skimage_data_photos", "astronaut.png")
    assert main(["caption", "--checkpoint", str(out), "--image", str(image), "--max-new-tokens", "4"]) == 0
    caption = capsys.readouterr().out.strip()
    assert isinstance(caption, str)


def test_accumulation_is_one_update_with_the_weighted_sum_of_gradients(setup):
    """Flamingo's mixing: one batch per dataset, Σ λ_m ∇L_m, a single AdamW update."""
    if setup is None:
        return
    import jax
    import optax

    from model.train import DatasetSpec, Trainer

    s1 = setup["single"]
    tc2 = dataclasses.replace(setup["tc"], datasets=[DatasetSpec("a", [], weight=0.3, batch_size=BATCH),
                                                     DatasetSpec("b", [], weight=0.7, batch_size=BATCH)])
    two = Trainer(setup["cfg"], tc2, s1.mesh, ["interleaved", "interleaved"], True)
    b1, b2 = (two.put(b) for b in setup["batches"])
    state = jax.device_put(setup["host_state"], two.state_sharding)

    @jax.jit
    def by_hand(state, b1, b2):
        p = state["params"]
        g = jax.tree.map(lambda x, y: 0.3 * x + 0.7 * y, jax.grad(s1.loss)(p, b1), jax.grad(s1.loss)(p, b2))
        upd, _ = s1.optimizer.update(g, state["opt_state"], p)
        return optax.apply_updates(p, upd), s1.loss(p, b1), s1.loss(p, b2)

    want_params, la, lb = by_hand(state, b1, b2)
    new, m = two.step(state, (b1, b2))
    assert abs(float(m["loss/a"]) - float(la)) < 1e-6 and abs(float(m["loss/b"]) - float(lb)) < 1e-6
    assert abs(float(m["loss"]) - (0.3 * float(la) + 0.7 * float(lb))) < 1e-5
    # Adam's first step is ≈ lr·sign(g): summation-order noise in near-zero gradients moves a few
    # values by ≪ lr, while any other weighting of the two gradients moves values by ≈ lr (3e-3).
    assert _max_diff(jax.device_get(new["params"]), jax.device_get(want_params)) < 1e-4


def test_config_file_overrides_a_preset(tmp_path):
    from model.configs import get_config
    from model.train import config_from_dict, config_to_dict, load_model_config

    f = tmp_path / "model.yaml"
    f.write_text("base: small\ncross_attn_every: 4\nlm:\n  n_layers: 4\n")
    cfg = load_model_config(str(f))
    assert cfg.lm.n_layers == 4 and cfg.cross_attn_every == 4 and cfg.lm.d_model == get_config("small").lm.d_model
    assert config_from_dict(config_to_dict(cfg)) == cfg  # what a run folder's model_config.json restores
    with pytest.raises(ValueError, match="neither a preset"):
        load_model_config("nope")
