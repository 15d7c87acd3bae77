"""Bytes per device of a config on a mesh, and whether it fits the device: the library behind
`gptjax plan` (gptjax/commands/measure/plan.py).

    gptjax plan --config configs/gpt3.py:2.7b --mesh data=1,fsdp=8,tensor=1 --device h100

Parameters, gradients and optimizer state are exact: their shapes come from `jax.eval_shape` of
the real model and optimizer, and each array is divided over the mesh by the same logical-axis
rules (`config.mesh.rules`) the trainer uses. Activations are a model of what the backward pass
keeps alive: per layer and token, a number of d_model-, head- and d_ff-sized vectors that
depends on the remat policy, plus the attention score matrices when attention is not fused,
plus the logits. Those counts were fitted to XLA's own buffer assignment of the compiled train
step (`compiled.memory_analysis()`) and are checked against it in tests/test_plan.py and
docs/memory.md; `--measure` prints that comparison for the devices at hand.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gptjax.errors import UserError
from gptjax.hardware.devices import DEVICES, human_bytes
from gptjax.hardware.gpu_clusters import cluster_for
from gptjax.hardware.tpu_slices import slice_for
from gptjax.model.gpt import GPT, GPTConfig
from gptjax.parallel import sharding
from gptjax.performance import aot
from gptjax.training import steps
from gptjax.training.loss import block_size
from gptjax.training.optim import make_optimizer
from gptjax.training.state import abstract_train_state, model_config

# The share of device memory a step may plan to use: XLA also needs workspace (cuBLAS, cuDNN,
# collectives) and fragmentation costs some. On GPUs run with XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
# (launch/env/gpu.env); JAX's default preallocation is only 75% of the device.
USABLE_FRACTION = 0.9

# Activation model: vectors kept per layer per token (see module docstring). "d" counts
# d_model-sized vectors, "i" heads*head_dim-sized ones and "f" d_ff-sized ones (both split by
# the tensor axis), "s" attention-score rows of T entries per head (unfused "xla" attention
# only; cuDNN's flash attention keeps none). Fitted to XLA:CPU's buffer assignment of the
# float32 train step (docs/memory.md): more than the handful of tensors a layer names, because
# XLA keeps several elementwise intermediates (LayerNorm, GELU, softmax) for the backward pass.
# STORED: what every layer keeps under each remat policy. TRANSIENT: the one layer group that
# is recomputed and live while its backward runs (remat != none).
ACT_STORED = {
    "none": {"d": 8.7, "i": 5.3, "f": 6.9, "s": 2.7},
    "full": {"d": 0.25, "i": 0.0, "f": 0.0, "s": 0.0},
    "save_dots": {"d": 1.5, "i": 1.5, "f": 0.5, "s": 0.0},
    "save_proj": {"d": 1.5, "i": 1.5, "f": 0.4, "s": 0.0},
    "save_qkv": {"d": 0.25, "i": 3.0, "f": 0.0, "s": 0.0},  # full + q, k, v: counted, not fitted
}
ACT_TRANSIENT = ACT_STORED["none"]
LOGIT_COPIES = 1.35         # float32 [tokens, vocab] buffers: upcast logits, softmax / gradient
EMBEDDING_COPIES = 2.1      # whole (gathered) token-embedding-sized buffers: its two gradient
#                             paths (lookup and tied output head) before they are summed


@dataclass
class Plan:
    name: str
    device: str
    mesh: dict
    batch_per_device: float
    seq_len: int
    remat: str
    compute_dtype: str
    params: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    logits_bytes: int
    embedding_grad_bytes: int
    total_bytes: int
    device_bytes: int
    usable_bytes: int
    fits: bool | None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_mesh(mesh: dict, num_devices: int) -> dict:
    return dict(zip(sharding.AXES, sharding.mesh_shape(mesh, num_devices), strict=True))


def _shard_elems(shape, mesh_axes, mesh: dict) -> int:
    """Elements of one device's shard of an array of `shape` split as `mesh_axes`."""
    n = 1
    for i, dim in enumerate(shape):
        axes = mesh_axes[i] if i < len(mesh_axes) else None
        if axes is None:
            div = 1
        else:
            div = math.prod(mesh[a] for a in ((axes,) if isinstance(axes, str) else axes))
        n *= -(-dim // div)
    return n


def state_bytes(config, mesh: dict) -> dict:
    """Exact per-device bytes of params, grads and optimizer state (+ the global param count)."""
    model = GPT(model_config(config))
    rules = sharding.logical_rules(config)
    tokens = jnp.zeros((1, min(config.data.seq_len, config.model.max_seq_len)), jnp.int32)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))["params"]
    specs = nn.get_partition_spec(boxed)
    params = nn.unbox(boxed)
    phys = jax.tree.map(lambda s: sharding.mesh_axes(s, rules), specs,
                        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    fraction = jax.tree.map(
        lambda p, s: _shard_elems(p.shape, tuple(s), mesh) / max(math.prod(p.shape), 1),
        params, phys, is_leaf=is_spec)
    nbytes = lambda a: math.prod(a.shape) * jnp.dtype(a.dtype).itemsize  # noqa: E731
    pairs = list(zip(jax.tree.leaves(params), jax.tree.leaves(fraction), strict=True))
    param_bytes = sum(nbytes(p) * f for p, f in pairs)
    opt_state = jax.eval_shape(make_optimizer(config).init, params)
    per_leaf = optax.tree_map_params(
        make_optimizer(config), lambda a, f: nbytes(a) * f, opt_state, fraction,
        transform_non_params=lambda a: nbytes(a) if hasattr(a, "shape") else 0,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    opt_bytes = sum(float(x) for x in jax.tree.leaves(per_leaf))
    grad_bytes = param_bytes  # gradients have the params' dtype and sharding
    accum = int(config.train.grad_accum)
    once_a_step = str(config.optim.grad_reduce_dtype) == "float32" and accum > 1
    if once_a_step and mesh["data"] * mesh["fsdp"] > 1:
        # each device accumulates its whole float32 gradient (split over tensor only) and the
        # shards are summed once a step (gptjax/training/steps.py); with grad_accum=1 each
        # layer's gradient is reduced where it is made, in float32, into the params' sharding
        whole = jax.tree.map(
            lambda p, s: _shard_elems(p.shape, tuple(steps.without_batch_axes(s)), mesh), params,
            phys, is_leaf=is_spec)
        grad_bytes += sum(4 * float(n) for n in jax.tree.leaves(whole))
    elif accum > 1:  # plus the float32 accumulator, sharded like params
        grad_bytes += sum(math.prod(p.shape) * 4 * f for p, f in pairs)
    count = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    return {"params": int(count), "param_bytes": int(param_bytes), "grad_bytes": int(grad_bytes),
            "optimizer_bytes": int(opt_bytes)}


def activation_bytes(c, batch: float, seq_len: int, tensor: int,
                     loss_chunk: int = 0) -> tuple[int, int]:
    """(activations kept for the backward pass, float32 logits) per device, in bytes.

    `c` is the GPTConfig with the device's compute dtype; `batch` sequences per device.
    """
    s = jnp.dtype(c.dtype).itemsize
    tokens = batch * seq_len
    heads = c.num_heads / tensor
    sizes = {"d": c.d_model, "i": heads * c.head_dim, "f": c.d_ff / tensor,
             "s": heads * seq_len if c.attention == "xla" else 0}

    def per_token(counts):
        return sum(counts[k] * sizes[k] for k in counts) * s

    stored = ACT_STORED[c.remat]
    layers = per_token(stored) * c.num_layers
    if c.remat != "none":
        layers += per_token(ACT_TRANSIENT) * c.group_size
    acts = tokens * layers
    block = batch * block_size(seq_len, loss_chunk)  # tokens of one cross-entropy block
    logits = block * (c.padded_vocab / tensor) * 4 * LOGIT_COPIES
    return int(acts), int(logits)


def plan(config, mesh: dict, device: str = "h100", num_devices: int | None = None) -> Plan:
    """Per-device memory of training `config` on `mesh` (axis sizes, -1 allowed) on `device`."""
    if device not in DEVICES:
        raise UserError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
    capacity, backend = DEVICES[device].memory_bytes, DEVICES[device].backend
    fixed = math.prod(v for v in mesh.values() if v != -1)
    mesh = resolve_mesh(mesh, num_devices or fixed)
    tr = config.train
    shards = mesh["data"] * mesh["fsdp"]
    accum = int(tr.grad_accum)
    if tr.batch_size % accum or (tr.batch_size // accum) % shards:
        raise UserError(f"config.train.batch_size={tr.batch_size} / grad_accum={accum} does not "
                        f"split over data x fsdp = {shards} devices")
    c = GPTConfig.from_config(config.model, backend=backend)
    state = state_bytes(config, mesh)
    batch = tr.batch_size / accum / shards
    acts, logits = activation_bytes(c, batch, int(config.data.seq_len), mesh["tensor"],
                                    int(config.train.loss_chunk))
    embedding = c.padded_vocab * c.d_model * jnp.dtype(c.param_dtype).itemsize / mesh["tensor"]
    workspace = int(EMBEDDING_COPIES * embedding)
    tokens_bytes = 2 * 4 * int(tr.batch_size / shards * config.data.seq_len)
    total = (state["param_bytes"] + state["grad_bytes"] + state["optimizer_bytes"] + acts
             + logits + workspace + tokens_bytes)
    usable = int(capacity * USABLE_FRACTION)
    note = ""
    if c.scan_layers and c.scan_unroll > 1:
        note = (f"model.scan_unroll resolves to {c.scan_unroll} on {device}; the activation "
                "counts are fitted to one layer group per scan iteration (what GPUs and TPUs "
                "compile under auto) and an unrolled stack's buffers differ (docs/memory.md): "
                "--measure compiles it, --config.model.scan_unroll=1 plans the scanned layout")
    return Plan(name=config.name, device=device, mesh=mesh, batch_per_device=batch,
                seq_len=int(config.data.seq_len), remat=c.remat,
                compute_dtype=str(c.dtype.__name__ if hasattr(c.dtype, "__name__") else c.dtype),
                params=state["params"], param_bytes=state["param_bytes"],
                grad_bytes=state["grad_bytes"], optimizer_bytes=state["optimizer_bytes"],
                activation_bytes=acts, logits_bytes=logits, embedding_grad_bytes=workspace,
                total_bytes=int(total), device_bytes=capacity, usable_bytes=usable,
                fits=(total <= usable) if capacity else None, note=note)


def measure(config) -> dict:
    """Compiles the real train step on the local devices (mesh from config.mesh) and returns
    XLA's per-device buffer sizes: peak = arguments + outputs - donated aliases + temporaries."""
    mesh = sharding.make_mesh(config.mesh)
    abstract, shardings = abstract_train_state(config, mesh)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         abstract, shardings)
    shape = (config.train.batch_size, config.data.seq_len)
    bs = sharding.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=bs) for k in ("inputs", "targets")}
    step = steps.make_train_step(config, mesh, shardings)
    with jax.set_mesh(mesh):
        compiled = step.lower(state, batch).compile()
    ma = compiled.memory_analysis()
    if ma is None:
        raise UserError("this backend reports no memory analysis of compiled programs")
    out = {"argument_bytes": int(ma.argument_size_in_bytes),
           "output_bytes": int(ma.output_size_in_bytes),
           "alias_bytes": int(ma.alias_size_in_bytes),
           "temp_bytes": int(ma.temp_size_in_bytes)}
    out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                         + out["temp_bytes"])
    out["mesh"] = {k: int(v) for k, v in mesh.shape.items()}
    out["device_kind"] = jax.devices()[0].device_kind
    return out


def compiler_report(config, p: Plan) -> dict | None:
    """The compiler's report (aot.compile_config, train step) of `config` on the plan's mesh
    and device: the TPU compiler where libtpu is installed and the slice has a standard layout,
    XLA:GPU where the CUDA plugin is (gptjax/hardware/gpu_clusters.py); else None (then the
    closed-form plan is the answer)."""
    devices = math.prod(p.mesh.values())
    target = slice_for(p.device, devices) or cluster_for(p.device, devices)
    if target is None:
        return None
    with config.unlocked():
        config.mesh.update(p.mesh)
    return aot.compile_config(config, target, eval_step=False)


def format_plan(p: Plan, measured: dict | None = None) -> str:
    """The plan as `gptjax plan` prints it; `measured` (from `measure`) adds XLA's peak."""
    m = p.mesh
    lines = [f"{p.name} on {m['data']}x{m['fsdp']}x{m['tensor']} (data x fsdp x tensor) "
             f"{p.device}: {p.params:,} params, {p.batch_per_device:g} x {p.seq_len} tokens per "
             f"device per micro-batch, remat {p.remat}, compute {p.compute_dtype}"]
    rows = [("parameters", p.param_bytes), ("gradients", p.grad_bytes),
            ("optimizer state", p.optimizer_bytes), ("activations", p.activation_bytes),
            ("logits (float32)", p.logits_bytes), ("embedding grads", p.embedding_grad_bytes),
            ("total per device", p.total_bytes)]
    lines += [f"  {label:<18} {human_bytes(value):>12}" for label, value in rows]
    if p.device_bytes:
        verdict = "fits" if p.fits else "does NOT fit"
        lines.append(f"  {p.device}: {human_bytes(p.device_bytes)}, plan within "
                     f"{USABLE_FRACTION:.0%} = {human_bytes(p.usable_bytes)} -> {verdict}")
        if not p.fits:
            lines.append("  try: --config.model.remat=full, a larger fsdp axis, "
                         "--config.optim.state_dtype=bfloat16, or a smaller batch with grad_accum")
    if p.note:
        lines.append(f"  note: {p.note}")
    if measured is not None:
        err = 100.0 * (p.total_bytes - measured["peak_bytes"]) / measured["peak_bytes"]
        lines.append(f"  measured (XLA, {measured['device_kind']}): "
                     f"{human_bytes(measured['peak_bytes'])} (estimate {err:+.1f}%)")
    return "\n".join(lines)
