"""Compiles the train step (and eval step) `gptjax train` would run on a TPU slice or a GPU
cluster, here, without a TPU or GPU, and reports what the TPU or XLA:GPU compiler says: the
library behind `gptjax compile` and `gptjax plan --device v5p|h100` (gptjax/commands/measure/
tpu_compile.py, plan.py). GPU clusters: gptjax/hardware/gpu_clusters.py (the CUDA plugin,
bfloat16 compute, `attention=auto` = cuDNN's fused attention, the fit judged against the usable
share of the GPU's memory; docs/gpu.md).

libtpu (`pip install -e '.[tpu]'`) describes any TPU slice to JAX (gptjax/hardware/tpu_slices.py);
gptjax builds its mesh over those devices and compiles exactly the jitted train step (and eval
step) `gptjax train` would run there: same model (bfloat16 compute, `attention=auto` = splash),
same shardings, same donated state, on abstract inputs. Nothing is allocated. The report per
chip comes from the compiler: parameters and optimizer state (the step's sharded arguments),
temporaries and the total (`memory_analysis()`), the FLOPs of its matmuls and its collectives
(its optimized HLO, gptjax/hardware/hlo.py), the compile time.
"""

from __future__ import annotations

import math
import time
from importlib.metadata import PackageNotFoundError, version
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gptjax.errors import UserError
from gptjax.hardware import gpu_clusters, hlo
from gptjax.hardware.devices import human_bytes
from gptjax.hardware.gpu_clusters import Cluster
from gptjax.hardware.tpu_slices import Slice, topology_devices
from gptjax.model.flops import flops_per_token, param_counts
from gptjax.model.gpt import GPT, GPTConfig
from gptjax.parallel import sharding
from gptjax.parallel.params import with_shardings
from gptjax.training import steps
from gptjax.training.optim import make_optimizer
from gptjax.training.state import abstract_train_state


def _shard_bytes(abstract, shardings) -> int:
    leaves = zip(jax.tree.leaves(abstract), jax.tree.leaves(
        shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)), strict=True)
    return sum(math.prod(sh.shard_shape(a.shape)) * jnp.dtype(a.dtype).itemsize
               for a, sh in leaves)


def _memory(compiled) -> dict:
    ma = compiled.memory_analysis()
    out = {"argument_bytes": int(ma.argument_size_in_bytes),
           "output_bytes": int(ma.output_size_in_bytes),
           "alias_bytes": int(ma.alias_size_in_bytes),
           "temp_bytes": int(ma.temp_size_in_bytes),
           "code_bytes": int(ma.generated_code_size_in_bytes)}
    out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                          + out["temp_bytes"])
    return out


def _compile(fn, args, mesh, what: str, s: Slice | Cluster, name: str,
             options: dict | None = None):
    """-> (compiled, seconds); the compiler's out-of-memory verdict becomes one line."""
    t0 = time.time()
    try:
        with jax.set_mesh(mesh):
            compiled = fn.lower(*args).compile(compiler_options=options)
    except Exception as e:  # JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory ... HBM
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text:
            raise
        why = text.split("RESOURCE_EXHAUSTED:", 1)[1].strip().splitlines()[0].rstrip(".")
        raise UserError(f"{name} does not fit {s.name} (the compiler, {what}: {why}); use "
                        f"a larger slice, --config.model.remat=full, a larger fsdp axis or "
                        f"--config.train.grad_accum") from None
    return compiled, time.time() - t0


def _flops(config, c: GPTConfig, stats: dict, chips: int) -> dict:
    """XLA's matmul FLOPs of one step (all chips) next to 6N + 12LHQT."""
    tokens = config.train.batch_size * config.data.seq_len
    total = flops_per_token(c, config.data.seq_len) * tokens
    six_n = 6 * param_counts(c)["flops_params"] * tokens
    xla = stats["matmul_flops"] * chips
    # Splash (Pallas) and cuDNN attention are kernels XLA does not cost: compare with 6N then.
    opaque = c.attention in ("splash", "cudnn")
    visible = six_n if opaque else total
    return {"xla_matmul": xla, "formula": total, "formula_6n": six_n,
            "formula_attention": total - six_n, "xla_over_formula": xla / visible,
            "compared_with": "6N" if opaque else "6N+12LHQT"}


def cost_of(compiled) -> dict:
    """The compiler's cost model of one step per device (TPU: flops, bytes accessed,
    optimal_seconds, each loop body counted once); {} where it has none (XLA:GPU)."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (a backend without a cost model)
        return {}
    ca = ca[0] if isinstance(ca, (list, tuple)) and ca else ca
    return {k: float(ca[k]) for k in ("flops", "bytes accessed", "optimal_seconds")
            if ca and k in ca}


CUDNN_FMHA = "__cudnn$fmha"  # custom-call targets __cudnn$fmhaSoftmax, ...Backward


def _kernels(custom_calls: dict, gpu: bool) -> dict:
    """The attention kernels in the step: Pallas calls on TPU, cuDNN's fused attention on GPU."""
    if gpu:
        return {k: v for k, v in custom_calls.items() if k.startswith(CUDNN_FMHA)}
    return {k: v for k, v in custom_calls.items() if k == "tpu_custom_call"}


def _multislice(config, s: Slice) -> None:
    """--num-slices N on a config that leaves every mesh.dcn_* at 1: data parallelism across
    the slices, over the DCN (config.mesh.dcn_data = N), as a multislice training run needs."""
    if s.num_slices > 1 and all(int(config.mesh.get(f"dcn_{a}", 1)) == 1
                                for a in sharding.AXES):
        with config.unlocked():
            config.mesh.dcn_data = s.num_slices


class Prepared(NamedTuple):
    """A config's train step made ready to compile for a slice or cluster."""
    gpu: bool
    devices: list
    mesh: jax.sharding.Mesh
    model_config: GPTConfig
    model: GPT
    tx: object
    abstract: object        # the train state's shapes, and
    shardings: object       # their shardings
    state: object           # both, as the step's first argument
    batch: dict
    usable: int             # memory per device the step may use


def prepare(config, s: Slice | Cluster) -> Prepared:
    """The devices of `s`, the mesh over them, the model as trained there (bfloat16; splash on
    TPU, cuDNN on GPU under attention=auto), its sharded abstract state and batch."""
    gpu = isinstance(s, Cluster)
    if not gpu:
        _multislice(config, s)
    if config.data.document_mask and config.data.eos_id < 0:
        with config.unlocked():  # no tokenizer here; the step costs the same for any EOS id
            config.data.eos_id = config.model.vocab_size - 1
    devices = gpu_clusters.topology_devices(s) if gpu else topology_devices(s)
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_config(config, mesh)
    c = GPTConfig.from_config(config.model, backend="gpu" if gpu else "tpu")
    model, tx = GPT(c), make_optimizer(config)
    abstract, shardings = abstract_train_state(config, mesh, model, tx)
    bs = sharding.batch_sharding(mesh)
    shape = (int(config.train.batch_size), int(config.data.seq_len))
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=bs) for k in ("inputs", "targets")}
    return Prepared(gpu, devices, mesh, c, model, tx, abstract, shardings,
                    with_shardings(abstract, shardings), batch,
                    s.usable_bytes if gpu else s.hbm_bytes)


def compile_train(config, s: Slice | Cluster, options: dict | None = None):
    """-> (the compiled train step of `config` on `s`, compile seconds); `options`: XLA
    compiler options (e.g. libtpu's flags)."""
    p = prepare(config, s)
    step = steps.make_train_step(config, p.mesh, p.shardings, p.model, p.tx)
    return _compile(step, (p.state, p.batch), p.mesh, "train step", s, config.name, options)


def compile_config(config, s: Slice | Cluster, eval_step: bool = True) -> dict:
    """Compiles `config`'s train (and eval) step for TPU slice or GPU cluster `s`; -> the
    report as a dict."""
    p = prepare(config, s)
    gpu, devices, mesh, c, usable = p.gpu, p.devices, p.mesh, p.model_config, p.usable
    shape = p.batch["inputs"].shape
    held = {"params_bytes": _shard_bytes(p.abstract.params, p.shardings.params),
            "optimizer_bytes": _shard_bytes(p.abstract.opt_state, p.shardings.opt_state)}
    if sum(held.values()) > usable:  # no need to ask the compiler
        raise UserError(f"{config.name} does not fit {s.name}: its parameters and optimizer "
                        f"state alone take {human_bytes(sum(held.values()))} per device of "
                        f"{human_bytes(usable)} usable (mesh {dict(mesh.shape)}); use a larger "
                        f"slice or cluster, or shard them with --mesh data=1,fsdp=-1")
    step = steps.make_train_step(config, mesh, p.shardings, p.model, p.tx)
    compiled, seconds = _compile(step, (p.state, p.batch), mesh, "train step", s, config.name)
    memory = {**_memory(compiled), **held}
    stats = hlo.analyze(compiled.as_text())
    report = {
        "name": config.name, "topology": s.name, "generation": s.generation,
        "grid": s.topology, "num_slices": s.num_slices, "chips": s.chips, "hosts": s.hosts,
        "device_kind": devices[0].device_kind, "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "batch": shape[0], "seq_len": shape[1], "grad_accum": int(config.train.grad_accum),
        "remat": c.remat, "attention": c.attention,
        "document_mask": bool(config.data.document_mask),
        "dtype": jnp.dtype(c.dtype).name, "params": param_counts(c)["params"],
        "memory": memory, "hbm_bytes": s.hbm_bytes, "usable_bytes": usable,
        "fits": memory["total_bytes"] <= usable, "platform": "gpu" if gpu else "tpu",
        "flops": _flops(config, c, stats, s.chips), "collectives": stats["collectives"],
        "collective_dtypes": stats["collective_dtypes"],
        "kernels": _kernels(stats["custom_calls"], gpu), "cost_analysis": cost_of(compiled),
        "compile_seconds": round(seconds, 1), "jax": jax.__version__,
        "libtpu": _version("libtpu"), "cuda_plugin": _version(gpu_clusters.PLUGIN)}
    if gpu and c.attention == "cudnn" and not report["kernels"]:
        raise UserError(f"{config.name} on {s.name}: attention is cudnn, but the compiled train "
                        f"step calls no cuDNN fused attention ({CUDNN_FMHA}*): XLA's attention "
                        f"runs instead; is nvidia-cudnn-cu12 installed (the gpu-compile extra)?")
    if eval_step:
        fn = steps.make_eval_step(config, mesh, p.shardings.params, p.model)
        compiled, seconds = _compile(fn, (p.state.params, p.batch), mesh, "eval step", s,
                                     config.name)
        report["eval"] = {"memory": _memory(compiled), "compile_seconds": round(seconds, 1)}
        report["fits"] = report["fits"] and report["eval"]["memory"]["total_bytes"] <= usable
    return report


def _version(package: str) -> str:
    try:
        return version(package.replace("_", "-"))
    except PackageNotFoundError:
        return "not installed"


def format_report(r: dict) -> str:
    m, mesh = r["memory"], r["mesh"]
    gpu = r.get("platform") == "gpu"
    n = r["num_slices"]
    unit = "GPUs" if gpu else "chips"
    chips = (f"{n} slices x {r['chips'] // n} chips {r['grid']}" if n > 1
             else f"{r['chips']} {unit} {r['grid']}")
    hosts = f"{r['hosts']} host" + ("s" if r["hosts"] > 1 else "")
    lines = [f"{r['name']} on {r['topology']} ({chips}, "
             f"{r['device_kind']}, {hosts}): mesh data={mesh['data']} "
             f"fsdp={mesh['fsdp']} tensor={mesh['tensor']}, batch {r['batch']} x "
             f"{r['seq_len']}, {r['params']:,} params, {r['dtype']}, remat {r['remat']}, "
             f"attention {r['attention']}"
             + (" per document" if r.get("document_mask") else ""),
             f"  per {'GPU ' if gpu else 'chip'}           train step"
             + ("      eval step" if "eval" in r else "")]
    ev = r.get("eval", {}).get("memory", {})
    rows = [("parameters", m["params_bytes"], None), ("optimizer state", m["optimizer_bytes"],
            None), ("temporaries", m["temp_bytes"], ev.get("temp_bytes")),
            ("total", m["total_bytes"], ev.get("total_bytes"))]
    for label, train, evl in rows:
        extra = f"{human_bytes(evl):>15}" if evl else ""
        lines.append(f"  {label:<18}{human_bytes(train):>12}{extra}")
    verdict = "fits" if r["fits"] else "does NOT fit"
    if gpu:
        lines.append(f"  memory per GPU {human_bytes(r['hbm_bytes'])}, usable "
                     f"{gpu_clusters.USABLE_FRACTION:.0%} = {human_bytes(r['usable_bytes'])}: "
                     f"{verdict}")
    else:
        lines.append(f"  HBM per chip {human_bytes(r['hbm_bytes'])}: {verdict}")
    f = r["flops"]
    lines.append(f"  FLOPs per step (all {unit}): XLA matmuls {f['xla_matmul']:.4g}, formula "
                 f"6N+12LHQT {f['formula']:.4g} (6N {f['formula_6n']:.4g}); XLA / "
                 f"{f['compared_with']} = {f['xla_over_formula']:.3f}")
    if gpu:
        calls = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["kernels"].items()))
        lines.append(f"  cuDNN fused attention calls per step (per GPU, not costed by XLA): "
                     f"{calls or 'NONE (attention runs in XLA)'}")
    elif r["kernels"]:
        lines.append(f"  Pallas kernel calls per step (per chip, not costed by XLA): "
                     f"{r['kernels']['tpu_custom_call']:.0f}")
    coll = ", ".join(f"{k} {v['count']:.0f} x ({human_bytes(v['bytes'])} in all)"
                     for k, v in sorted(r["collectives"].items())) or "none"
    lines.append(f"  collectives per step (per {'GPU' if gpu else 'chip'}): {coll}")
    times = f"{r['compile_seconds']:.1f} s (train)"
    if "eval" in r:
        times += f" + {r['eval']['compile_seconds']:.1f} s (eval)"
    compiler = f"jax-cuda12-plugin {r['cuda_plugin']}" if gpu else f"libtpu {r['libtpu']}"
    lines.append(f"  compiled in {times}; jax {r['jax']}, {compiler}")
    return "\n".join(lines)
