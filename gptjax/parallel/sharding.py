"""Partitioning: the device mesh, the logical-axis rules, and the checks that run before XLA.

The model names only logical axes ('embed', 'heads', 'batch', ...). `config.mesh.rules` is the
one table that maps them onto the physical mesh axes `data`, `fsdp` and `tensor`, so switching
between data parallelism, FSDP (ZeRO-3 style parameter sharding) and tensor parallelism is a
config change:

    --config.mesh.data=-1                         pure data parallel (params replicated)
    --config.mesh.data=1 --config.mesh.fsdp=-1    FSDP: params, grads and Adam state sharded
    --config.mesh.tensor=2                        Megatron-style heads / MLP / vocab split

Batches are split over ('data', 'fsdp'); parameters over 'fsdp' (the 'embed' axis) and 'tensor'.

Multislice (several TPU slices joined by the data-center network, DCN): `mesh.dcn_data=2` says
that a factor 2 of the data axis runs across slices and the rest inside each slice, over ICI
(`mesh_utils.create_hybrid_device_mesh`, as MaxText does). On GPUs / CPUs each process counts
as a slice, which puts any axis across processes (tests/test_multiprocess.py).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gptjax.errors import UserError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """Resolves the config's (data, fsdp, tensor), one of which may be -1 = the rest."""
    sizes = [int(mesh_cfg[a]) for a in AXES]
    spec = ", ".join(f"{a}={s}" for a, s in zip(AXES, sizes, strict=True))
    if sizes.count(-1) > 1:
        raise UserError(f"config.mesh ({spec}): at most one axis may be -1 (= the rest)")
    if any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"config.mesh ({spec}): sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise UserError(f"config.mesh ({spec}): {num_devices} devices are not divisible by "
                            f"the fixed axes' product {known}")
        sizes[sizes.index(-1)] = num_devices // known
    total = math.prod(sizes)
    if total > num_devices:
        raise UserError(f"config.mesh ({spec}) needs {total} devices but only {num_devices} "
                        f"are available; shrink the mesh or set one axis to -1")
    if total < num_devices:
        raise UserError(f"config.mesh ({spec}) uses {total} of {num_devices} devices; set one "
                        f"axis to -1 to use them all")
    return tuple(sizes)


def _granules(devices) -> tuple[bool, int]:
    """-> (by slice, count): the slices of a TPU multislice job, elsewhere the processes."""
    slices = {getattr(d, "slice_index", None) for d in devices}
    if len(slices) > 1 and None not in slices:
        return True, len(slices)
    return False, len({d.process_index for d in devices})


def device_grid(mesh_cfg, devices) -> np.ndarray:
    """The devices arranged as the (data, fsdp, tensor) mesh; `mesh.dcn_*` factors of an axis
    run across slices (TPU multislice) or processes (elsewhere), the rest inside them."""
    devices = list(devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    dcn = tuple(int(mesh_cfg.get(f"dcn_{a}", 1)) for a in AXES)
    spec = ", ".join(f"dcn_{a}={d}" for a, d in zip(AXES, dcn, strict=True))
    by_slice, granules = _granules(devices)
    if any(d < 1 for d in dcn) or any(s % d for s, d in zip(shape, dcn, strict=True)):
        raise UserError(f"config.mesh ({spec}): each must be >= 1 and divide its axis "
                        f"{dict(zip(AXES, shape, strict=True))}")
    if math.prod(dcn) == 1:
        if by_slice:
            raise UserError(f"this job spans {granules} TPU slices: set config.mesh.dcn_data="
                            f"{granules} (data parallelism across slices, over DCN)")
        try:
            return jax.make_mesh(shape, AXES, devices=devices).devices
        except (TypeError, ValueError, NotImplementedError):
            # make_mesh wants devices in a physical topology order; else the given order.
            return np.asarray(devices).reshape(shape)
    if math.prod(dcn) != granules:
        raise UserError(f"config.mesh ({spec}) spans {math.prod(dcn)} slices / processes but "
                        f"the devices are in {granules}")
    ici = tuple(s // d for s, d in zip(shape, dcn, strict=True))
    return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                process_is_granule=not by_slice,
                                                allow_split_physical_axes=True)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor) over `devices` (default: all devices).

    Axis types are Auto (not Explicit) on every jax version: sharding is driven by the logical
    constraints and the in/out shardings of jit, not by sharding-in-types.
    """
    grid = device_grid(mesh_cfg, jax.devices() if devices is None else devices)
    kwargs = {}
    if hasattr(jax.sharding, "AxisType"):
        kwargs["axis_types"] = (jax.sharding.AxisType.Auto,) * len(AXES)
    return Mesh(grid, AXES, **kwargs)


def parse_mesh(text: str) -> dict:
    """'data=2,fsdp=4,tensor=1' -> {'data': 2, 'fsdp': 4, 'tensor': 1} (missing axes = 1)."""
    out = {a: 1 for a in AXES}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in AXES:
            raise UserError(f"--mesh {text!r}: expected AXIS=SIZE pairs with AXIS in {AXES}, "
                            f"e.g. data=2,fsdp=4,tensor=1")
        try:
            out[key] = int(value)
        except ValueError:
            raise UserError(f"--mesh {text!r}: {key}={value!r} is not an integer") from None
    return out


def single_device_mesh(device=None) -> Mesh:
    device = device or jax.local_devices()[0]
    kwargs = {}
    if hasattr(jax.sharding, "AxisType"):
        kwargs["axis_types"] = (jax.sharding.AxisType.Auto,) * len(AXES)
    return Mesh(np.asarray([device]).reshape(1, 1, 1), AXES, **kwargs)


def logical_rules(config) -> tuple:
    """`config.mesh.rules` as the tuple-of-pairs `nn.logical_axis_rules` wants."""
    rules = config.mesh.rules if hasattr(config, "mesh") else config
    out = []
    for rule in rules:
        name, axes = rule
        if isinstance(axes, list):
            axes = tuple(axes)
        for a in (axes if isinstance(axes, tuple) else (axes,)):
            if a is not None and a not in AXES:
                raise UserError(f"config.mesh.rules: {name!r} -> {a!r} is not a mesh axis; "
                                f"use one of {AXES} or None")
        out.append((name, axes))
    return tuple(out)


def mesh_axes(logical_spec, rules) -> PartitionSpec:
    """Logical PartitionSpec (names) -> physical PartitionSpec (mesh axes)."""
    return nn.logical_to_mesh_axes(logical_spec, rules)


def logical_to_sharding(logical_specs, mesh: Mesh, rules):
    """Tree of logical PartitionSpecs -> tree of NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return math.prod(mesh.shape[a] for a in axes)


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def check_shardable(abstract_tree, shardings, what: str = "parameter") -> None:
    """Every sharded dimension must divide evenly; otherwise name the array and the fix."""
    flat, _ = jax.tree_util.tree_flatten_with_path(abstract_tree)
    flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sharding in zip(flat, flat_s, strict=True):
        spec = sharding.spec
        for dim, axes in enumerate(spec):
            n = axis_size(sharding.mesh, axes)
            if n > 1 and leaf.shape[dim] % n:
                raise UserError(
                    f"{what} {_path_name(path)} of shape {tuple(leaf.shape)}: dimension {dim} "
                    f"({leaf.shape[dim]}) does not divide over mesh axes {axes} of size {n}; "
                    f"change config.mesh or config.mesh.rules, or the model size")


def check_config(config, mesh: Mesh) -> None:
    """Shape checks that would otherwise surface as XLA errors (or silent padding)."""
    tr, m = config.train, config.model
    shards = axis_size(mesh, BATCH_AXES)
    accum = int(tr.grad_accum)
    if accum < 1:
        raise UserError(f"config.train.grad_accum={accum} must be >= 1")
    if tr.batch_size % accum:
        raise UserError(f"config.train.batch_size={tr.batch_size} is not divisible by "
                        f"train.grad_accum={accum}")
    micro = tr.batch_size // accum
    if micro % shards:
        raise UserError(
            f"config.train.batch_size={tr.batch_size} / grad_accum={accum} = {micro} sequences "
            f"per micro-batch do not split over data x fsdp = {mesh.shape['data']} x "
            f"{mesh.shape['fsdp']} = {shards} devices; use a batch size that is a multiple of "
            f"{shards * accum}")
    tensor = mesh.shape["tensor"]
    if m.num_heads % tensor:
        raise UserError(f"config.model.num_heads={m.num_heads} is not divisible by "
                        f"mesh.tensor={tensor}")
    if m.d_ff % tensor:
        raise UserError(f"config.model.d_ff={m.d_ff} is not divisible by mesh.tensor={tensor}")
    if config.data.seq_len > m.max_seq_len:
        raise UserError(f"config.data.seq_len={config.data.seq_len} is longer than "
                        f"model.max_seq_len={m.max_seq_len}")


def host_rows(mesh: Mesh, batch_size: int) -> np.ndarray:
    """The rows of a global batch this process must supply, sorted: every row that one of its
    devices holds (as MaxText and Levanter do). With the batch split over (data, fsdp) these are
    B / process_count distinct rows when those axes span the processes; when another axis
    (tensor) spans them, processes holding replicas of the same rows get the same rows."""
    shards = batch_sharding(mesh, 1).addressable_devices_indices_map((batch_size,))
    rows = {r for index in shards.values() for r in range(*index[0].indices(batch_size))}
    return np.asarray(sorted(rows), np.int64)


def global_batch(batch: dict, mesh: Mesh, batch_size: int | None = None) -> dict:
    """This process's rows {'inputs','targets'} [len(host_rows), T] -> global jax.Arrays
    [batch_size, T] (None: inferred, right only when every process holds distinct rows)."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        shape = None if batch_size is None else (int(batch_size), *v.shape[1:])
        out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v, shape)
    return out


def inference_mesh(config):
    """The run's mesh when it fits this machine, else pure data parallel over all devices."""
    try:
        mesh = make_mesh(config.mesh)
        check_config(config, mesh)
        return mesh
    except UserError:
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
        return make_mesh(config.mesh)
