"""Logical names → mesh layouts: Megatron splits, divisibility fallback, ZeRO-1 specs, mesh parsing."""
from __future__ import annotations

import pytest

from tests.model.conftest import need_devices


@pytest.fixture(scope="module")
def eight():
    return need_devices(8, "tests/model/test_sharding.py")


def _abstract(name: str):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from model.configs import get_config
    from model.flamingo import Flamingo

    cfg = get_config(name)
    v = cfg.vision
    boxed = jax.eval_shape(lambda: Flamingo(cfg).init(
        jax.random.key(0), jnp.zeros((1, 1, 1, v.image_size, v.image_size, 3)), jnp.zeros((1, 8), jnp.int32))["params"])
    return nn.get_partition_spec(boxed), nn.unbox(boxed)


def test_parse_mesh():
    from model.sharding import parse_mesh

    assert parse_mesh("data=4,model=2", 8) == {"data": 4, "model": 2}
    assert parse_mesh("model=2", 8) == {"data": 4, "model": 2}
    assert parse_mesh(None, 8) == {"data": 8, "model": 1}
    with pytest.raises(ValueError, match="needs 16 devices"):
        parse_mesh("data=8,model=2", 8)
    with pytest.raises(ValueError, match="expected data=N,model=M"):
        parse_mesh("pipe=2", 8)


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama", "small"])
def test_every_logical_name_of_the_model_has_a_rule(preset):
    import jax
    from jax.sharding import PartitionSpec as P

    from model.sharding import DEFAULT_RULES

    specs, _ = _abstract(preset)
    names = {e for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)) for e in s if e}
    assert names <= {n for n, _ in DEFAULT_RULES}, names - {n for n, _ in DEFAULT_RULES}


def test_megatron_layout_of_attention_ffw_xattn_and_embeddings(eight):
    if not eight:
        return
    from flax import traverse_util
    from jax.sharding import PartitionSpec as P

    from model.sharding import make_mesh, param_shardings

    specs, abstract = _abstract("tiny-llama")
    sh = traverse_util.flatten_dict(param_shardings(abstract, specs, make_mesh({"data": 4, "model": 2})), sep="/")
    expect = {
        "lm/layers_0/q/kernel": P(None, "model", None),  # column-parallel: heads split
        "lm/layers_0/k/kernel": P(None, "model", None),
        "lm/layers_0/o/kernel": P("model", None, None),  # row-parallel
        "lm/layers_0/mlp/up/kernel": P(None, "model"),
        "lm/layers_0/mlp/down/kernel": P("model", None),
        "lm/xattn_1/q/kernel": P(None, "model", None),
        "lm/xattn_1/k/kernel": P(None, "model", None),
        "lm/xattn_1/o/kernel": P("model", None, None),
        "lm/xattn_1/ffw/fc1/kernel": P(None, "model"),
        "lm/embed": P("model", None),  # vocabulary-parallel
        "lm/xattn_1/attn_gate": P(),
    }
    for name, spec in expect.items():
        assert sh[name].spec == spec, (name, sh[name].spec)
    # 2 kv heads cannot split 4 ways: that dimension falls back to replication.
    sh4 = traverse_util.flatten_dict(param_shardings(abstract, specs, make_mesh({"data": 2, "model": 4})), sep="/")
    assert sh4["lm/layers_0/k/kernel"].spec == P(None, None, None)
    assert sh4["lm/layers_0/q/kernel"].spec == P(None, "model", None)


def test_zero1_spec_adds_data_to_the_largest_divisible_dimension(eight):
    if not eight:
        return
    from jax.sharding import PartitionSpec as P

    from model.sharding import make_mesh, zero1_spec

    mesh = make_mesh({"data": 4, "model": 2})
    assert zero1_spec((64, 176), P(None, "model"), mesh) == P(None, ("model", "data"))
    assert zero1_spec((64, 6), P(None, None), mesh) == P("data", None)
    assert zero1_spec((6,), P(None), mesh) == P(None)  # nothing divisible: stays replicated
    assert zero1_spec((8, 8), P("data", None), mesh) == P("data", None)
