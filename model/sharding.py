"""Logical axis names → mesh layouts: Megatron-style model parallelism plus ZeRO-1.

The model tags every parameter (and a few activations) with logical names ("vocab", "embed",
"mlp", "heads", …); only the trainer knows the mesh. ``DEFAULT_RULES`` is the trainer's map from
names to the mesh axes ``("data", "model")``:

* batch → ``data`` (data parallelism);
* heads / kv_heads / mlp / vocab → ``model``: Megatron column-parallel q/k/v and FFW-in,
  row-parallel attention-out and FFW-out, vocabulary-parallel embeddings and head, for the LM's
  self-attention, the GATED XATTN-DENSE blocks, the resampler and the vision encoder alike;
* everything else replicated.

A dimension that the assigned mesh axes do not divide is replicated instead (e.g. 2 kv heads on a
4-way model axis), so any preset runs on any mesh. ``zero1_sharding`` additionally splits each
optimizer-state array over ``data`` (ZeRO stage 1): parameters stay replicated across data-parallel
replicas, Adam's moments do not.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "model")

Rules = tuple[tuple[str, Any], ...]

DEFAULT_RULES: Rules = (
    ("batch", "data"),
    ("vocab", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("embed", None),
    ("vision_embed", None),
    ("kv", None),
    ("length", None),
    ("norm", None),
    ("latents", None),
    ("patch", None),
    ("frames", None),
    ("positions", None),
)


def parse_mesh(spec: str | None, n_devices: int | None = None) -> dict[str, int]:
    """``"data=4,model=2"`` → ``{"data": 4, "model": 2}``; ``-1`` or a missing data axis takes the rest."""
    n = n_devices or jax.device_count()
    out = {"data": -1, "model": 1}
    if spec:
        for part in spec.split(","):
            name, _, size = part.partition("=")
            name = name.strip()
            if name not in MESH_AXES or not size.strip().lstrip("-").isdigit():
                raise ValueError(f"bad --mesh entry {part!r}: expected data=N,model=M")
            out[name] = int(size)
    if out["data"] == -1:
        out["data"] = max(1, n // out["model"])
    if out["data"] * out["model"] > n:
        raise ValueError(f"mesh {out} needs {out['data'] * out['model']} devices; {n} available")
    return out


def make_mesh(shape: dict[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, model) mesh with Auto axes (GSPMD propagation; JAX 0.10 defaults to Explicit)."""
    sizes = (shape["data"], shape["model"])
    if devices is not None:
        return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 2)
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * 2)


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        return mesh.shape[axes]
    return int(np.prod([mesh.shape[a] for a in axes]))


def fit_spec(shape: Sequence[int], spec: P, mesh: Mesh) -> P:
    """Drop the mesh axes of any dimension they do not divide (that dimension is replicated)."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    return P(*[ax if ax is not None and dim % _axis_size(mesh, ax) == 0 else None for dim, ax in zip(shape, entries)])


def logical_specs(boxed_tree: Any) -> Any:
    """Logical PartitionSpecs (names) of a boxed parameter tree (``nn.Partitioned`` leaves)."""
    return nn.get_partition_spec(boxed_tree)


def param_shardings(abstract_params: Any, logical: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """NamedShardings for an (unboxed) parameter tree from its logical specs and ``rules``."""
    mesh_specs = nn.logical_to_mesh(logical, rules)

    def one(x, spec):
        return NamedSharding(mesh, fit_spec(x.shape, spec if isinstance(spec, P) else P(), mesh))

    return jax.tree.map(one, abstract_params, mesh_specs, is_leaf=lambda s: isinstance(s, P))


def zero1_spec(shape: Sequence[int], spec: P, mesh: Mesh, axis: str = "data") -> P:
    """Add ``axis`` to the largest dimension it divides (ZeRO-1); unchanged when none fits."""
    n = mesh.shape[axis]
    entries = list(spec) + [None] * (len(shape) - len(spec))
    if n == 1 or any(axis == e or (isinstance(e, tuple) and axis in e) for e in entries):
        return P(*entries)
    best = None
    for d in sorted(range(len(shape)), key=lambda d: -shape[d]):
        cur = entries[d]
        combined = (axis,) if cur is None else ((cur,) if isinstance(cur, str) else tuple(cur)) + (axis,)
        if shape[d] % _axis_size(mesh, combined) == 0:
            best = (d, combined if len(combined) > 1 else axis)
            break
    if best is None:
        return P(*entries)
    entries[best[0]] = best[1]
    return P(*entries)


def zero1_sharding(abstract_opt_state: Any, params_sharding: Any, mesh: Mesh) -> Any:
    """Optimizer-state shardings for ZeRO-1.

    A state leaf that mirrors a parameter (Adam's mu and nu: its tree path ends with the
    parameter's path and the shapes agree) takes that parameter's layout plus ``data``; other
    leaves (step counts, empty placeholders of frozen parameters) are replicated.
    """
    is_sh = lambda x: isinstance(x, NamedSharding)
    by_path = {tuple(p): s for p, s in jax.tree_util.tree_leaves_with_path(params_sharding, is_leaf=is_sh)}
    longest = max((len(p) for p in by_path), default=0)
    replicated = NamedSharding(mesh, P())

    def one(path, x):
        if not hasattr(x, "shape"):
            return replicated
        for k in range(min(longest, len(path)), 0, -1):
            s = by_path.get(tuple(path[-k:]))
            if s is not None:
                return NamedSharding(mesh, zero1_spec(x.shape, s.spec, mesh))
        return replicated

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def state_bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes of ``tree``'s arrays held on each device (from the arrays' shardings)."""
    out: dict[Any, int] = {}
    for x in jax.tree.leaves(tree):
        if not isinstance(x, jax.Array):
            continue
        for sh in x.addressable_shards:
            out[sh.device] = out.get(sh.device, 0) + sh.data.nbytes
    return out
