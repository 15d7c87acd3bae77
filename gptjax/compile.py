"""`gptjax compile`: the TPU compiler's own verdict on a config and a TPU slice, without a TPU.

    gptjax compile --config configs/gpt3.py:xl --topology v5p-32
    gptjax compile --config configs/gpt3.py:175b --topology v5p-1024 --json
    gptjax compile --config configs/gpt2.py:124m --topology v5e-16 --mesh data=4,fsdp=4

libtpu (`pip install -e '.[tpu]'`) describes any TPU slice to JAX
(`jax.experimental.topologies`); gptjax builds its mesh over those devices and compiles exactly
the jitted train step (and eval step) `gptjax train` would run there: same model (bfloat16
compute, `attention=auto` = splash), same shardings, same donated state, on abstract inputs.
Nothing is allocated. What it prints per chip comes from the compiler: parameters and optimizer
state (the step's sharded arguments), temporaries and the total (`memory_analysis()`), the
FLOPs of its matmuls and its collectives (its optimized HLO, gptjax/hlo.py), the compile time.

Slices are named as `gcloud` names accelerator types (docs/tpu.md):
- v4-N, v5p-N: N counts TensorCores, 2 per chip, so N/2 chips, one JAX device per chip
  (megacore), in a 3-D torus: v5p-8 = 2x2x1 chips, v5p-16 = 2x2x2, v5p-32 = 2x2x4, 2x4x4,
  4x4x4, ... (each doubling grows the smallest dimension, the last of equals first).
- v5e-N (= v5litepod-N), v6e-N: N chips in a 2-D grid: 1x1, 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16.
- any generation with an explicit shape: v5p:4x4x12, v6e:8x16.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import time
from importlib.metadata import PackageNotFoundError, version

import jax
import jax.numpy as jnp

from gptjax import hlo, sharding, steps
from gptjax.cli import add_config_arg
from gptjax.devices import DEVICES, human_bytes
from gptjax.errors import UserError
from gptjax.flops import flops_per_token, param_counts
from gptjax.model import GPT, GPTConfig
from gptjax.optim import make_optimizer
from gptjax.state import abstract_train_state, with_shardings

# generation: (libtpu's name, TensorCores per chip counted in "-N", grid dimensions)
GENERATIONS = {"v4": ("v4", 2, 3), "v5p": ("v5p", 2, 3), "v5e": ("v5e", 1, 2),
               "v6e": ("v6e", 1, 2)}
ALIASES = {"v5litepod": "v5e"}
CHIPS_PER_HOST = 4      # v4, v5p, and multi-host v5e / v6e slices: 2x2 chips per VM


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str           # as written: v5p-32, v5e:4x4
    generation: str     # v4 | v5p | v5e | v6e
    shape: tuple        # chips per grid dimension
    num_slices: int = 1

    @property
    def chips(self) -> int:
        return math.prod(self.shape) * self.num_slices

    @property
    def topology(self) -> str:
        return "x".join(map(str, self.shape))

    @property
    def hbm_bytes(self) -> int:
        return DEVICES[self.generation][0]

    @property
    def host_bounds(self) -> tuple:
        """Chips per host VM in each grid dimension: 2x2, except v5e-8 / v6e-8 (one 2x4 VM)."""
        if math.prod(self.shape) < CHIPS_PER_HOST or self.shape == (2, 4):
            return (*self.shape, 1, 1)[:3]
        return (2, 2, 1)

    @property
    def hosts(self) -> int:
        return math.prod(self.shape) // math.prod(self.host_bounds) * self.num_slices


def grid(chips: int, dims: int) -> tuple:
    """Power-of-two chip counts -> the slice's grid: double the smallest dimension (the last of
    equals) from 1x1 / 2x2x1, as Cloud TPU lays slices out."""
    shape = [1, 1] if dims == 2 else [2, 2, 1]
    if chips < math.prod(shape) or chips & (chips - 1):
        return ()
    while math.prod(shape) < chips:
        smallest = min(shape)
        i = max(j for j, s in enumerate(shape) if s == smallest)
        shape[i] *= 2
    return tuple(shape)


def parse_topology(text: str, num_slices: int = 1) -> Slice:
    """'v5p-32' | 'v5litepod-64' | 'v6e:8x16' -> Slice; anything else is one UserError line."""
    examples = "e.g. v5p-32, v5e-16 (= v5litepod-16), v6e-256, v4-32, or v5p:4x4x12"
    m = re.fullmatch(r"(v\d+[a-z]*)([-:])([\dx]+)", text.strip().lower())
    gen = ALIASES.get(m.group(1), m.group(1)) if m else None
    if gen not in GENERATIONS:
        raise UserError(f"--topology {text!r}: not a TPU accelerator type; {examples}")
    if num_slices < 1:
        raise UserError(f"--num-slices={num_slices} must be >= 1")
    _, cores, dims = GENERATIONS[gen]
    if m.group(2) == ":":
        shape = tuple(int(x) for x in m.group(3).split("x") if x)
        if len(shape) != dims or min(shape, default=0) < 1:
            raise UserError(f"--topology {text!r}: {gen} slices are {dims}-D grids of chips, "
                            f"e.g. {gen}:{'x'.join(['2'] * dims)}")
    else:
        if "x" in m.group(3) or int(m.group(3)) % cores:
            raise UserError(f"--topology {text!r}: {gen}-N counts {cores} core(s) per chip; "
                            f"{examples}")
        shape = grid(int(m.group(3)) // cores, dims)
        if not shape:
            raise UserError(f"--topology {text!r}: gptjax lays out power-of-two {gen} slices "
                            f"only; give the grid explicitly, e.g. {gen}:4x4x12")
    return Slice(text, gen, shape, num_slices)


def slice_for(device: str, chips: int) -> Slice | None:
    """The slice of `chips` chips of TPU generation `device` (plan's --device), where libtpu is
    installed and the slice has a standard layout; else None."""
    if device not in GENERATIONS or importlib.util.find_spec("libtpu") is None:
        return None
    _, cores, dims = GENERATIONS[device]
    shape = grid(chips, dims)
    return Slice(f"{device}-{chips * cores}", device, shape) if shape else None


def topology_devices(s: Slice) -> list:
    """The slice's devices as libtpu describes them (no TPU needed, only libtpu)."""
    name, cores, dims = GENERATIONS[s.generation]
    # Describing a slice needs no TPU: tell libtpu not to look for one on this machine (it
    # would query a metadata server and print warnings). A TPU VM has these set already.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{s.generation}-{math.prod(s.shape) * cores}")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no TPU is held: compiles may overlap
    try:
        from jax.experimental import topologies  # lazy: libtpu's compiler, only for `compile`
    except ImportError as e:
        raise UserError(f"gptjax compile needs libtpu: pip install -e '.[tpu]' ({e})") from None
    # Torus links close a dimension in full-size slices (3-D: 4x4x4 and up; 2-D: 16 chips).
    wrap = tuple((min(s.shape) >= 4) if dims == 3 else (d >= 16) for d in s.shape)
    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=f"{name}:{s.topology}", num_slices=s.num_slices,
            chips_per_host_bounds=s.host_bounds, wrap=(*wrap, False)[:3],
            chip_config_name="megacore" if cores == 2 else "default")
    except Exception as e:  # libtpu missing or the shape unknown to it
        raise UserError(f"--topology {s.name}: libtpu cannot describe {name}:{s.topology} "
                        f"({str(e).splitlines()[0][:160]}); is libtpu installed "
                        f"(pip install -e '.[tpu]')?") from None
    return list(desc.devices)


# ----------------------------------------------------------------------------- compiling


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


def _compile(fn, args, mesh, what: str, s: Slice, name: str):
    """-> (compiled, seconds); the compiler's out-of-memory verdict becomes one line."""
    t0 = time.time()
    try:
        with jax.set_mesh(mesh):
            compiled = fn.lower(*args).compile()
    except Exception as e:  # JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory ... HBM
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text:
            raise
        why = text.split("RESOURCE_EXHAUSTED:", 1)[1].strip().splitlines()[0].rstrip(".")
        raise UserError(f"{name} does not fit {s.name} (the TPU compiler, {what}: {why}); use "
                        f"a larger slice, --config.model.remat=full, a larger fsdp axis or "
                        f"--config.train.grad_accum") from None
    return compiled, time.time() - t0


def _flops(config, c: GPTConfig, stats: dict, chips: int) -> dict:
    """XLA's matmul FLOPs of one step (all chips) next to 6N + 12LHQT."""
    tokens = config.train.batch_size * config.data.seq_len
    total = flops_per_token(c, config.data.seq_len) * tokens
    six_n = 6 * param_counts(c)["flops_params"] * tokens
    xla = stats["matmul_flops"] * chips
    # Splash attention runs in Pallas kernels XLA does not cost: compare with 6N alone then.
    visible = total if c.attention != "splash" else six_n
    return {"xla_matmul": xla, "formula": total, "formula_6n": six_n,
            "formula_attention": total - six_n, "xla_over_formula": xla / visible,
            "compared_with": "6N+12LHQT" if c.attention != "splash" else "6N"}


def _multislice(config, s: Slice) -> None:
    """--num-slices N on a config that leaves every mesh.dcn_* at 1: data parallelism across
    the slices, over the DCN (config.mesh.dcn_data = N), as a multislice training run needs."""
    if s.num_slices > 1 and all(int(config.mesh.get(f"dcn_{a}", 1)) == 1
                                for a in sharding.AXES):
        with config.unlocked():
            config.mesh.dcn_data = s.num_slices


def compile_config(config, s: Slice, eval_step: bool = True) -> dict:
    """Compiles `config`'s train (and eval) step for slice `s`; -> the report as a dict."""
    _multislice(config, s)
    devices = topology_devices(s)
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_config(config, mesh)
    c = GPTConfig.from_config(config.model, backend="tpu")
    model, tx = GPT(c), make_optimizer(config)
    abstract, shardings = abstract_train_state(config, mesh, model, tx)
    state = with_shardings(abstract, shardings)
    bs = sharding.batch_sharding(mesh)
    shape = (int(config.train.batch_size), int(config.data.seq_len))
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=bs) for k in ("inputs", "targets")}
    held = {"params_bytes": _shard_bytes(abstract.params, shardings.params),
            "optimizer_bytes": _shard_bytes(abstract.opt_state, shardings.opt_state)}
    if sum(held.values()) > s.hbm_bytes:  # no need to ask the compiler
        raise UserError(f"{config.name} does not fit {s.name}: its parameters and optimizer "
                        f"state alone take {human_bytes(sum(held.values()))} per chip of "
                        f"{human_bytes(s.hbm_bytes)} HBM (mesh {dict(mesh.shape)}); use a larger "
                        f"slice or shard them with --mesh data=1,fsdp=-1")
    step = steps.make_train_step(config, mesh, shardings, model, tx)
    compiled, seconds = _compile(step, (state, batch), mesh, "train step", s, config.name)
    memory = {**_memory(compiled), **held}
    stats = hlo.analyze(compiled.as_text())
    report = {
        "name": config.name, "topology": s.name, "generation": s.generation,
        "grid": s.topology, "num_slices": s.num_slices, "chips": s.chips, "hosts": s.hosts,
        "device_kind": devices[0].device_kind, "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "batch": shape[0], "seq_len": shape[1], "remat": c.remat, "attention": c.attention,
        "dtype": jnp.dtype(c.dtype).name, "params": param_counts(c)["params"],
        "memory": memory, "hbm_bytes": s.hbm_bytes, "fits": memory["total_bytes"] <= s.hbm_bytes,
        "flops": _flops(config, c, stats, s.chips), "collectives": stats["collectives"],
        "kernels": {k: v for k, v in stats["custom_calls"].items() if k == "tpu_custom_call"},
        "compile_seconds": round(seconds, 1), "jax": jax.__version__, "libtpu": _libtpu()}
    if eval_step:
        fn = steps.make_eval_step(config, mesh, shardings.params, model)
        compiled, seconds = _compile(fn, (state.params, batch), mesh, "eval step", s,
                                     config.name)
        report["eval"] = {"memory": _memory(compiled), "compile_seconds": round(seconds, 1)}
        report["fits"] = report["fits"] and report["eval"]["memory"]["total_bytes"] <= s.hbm_bytes
    return report


def _libtpu() -> str:
    try:
        return version("libtpu")
    except PackageNotFoundError:
        return "not installed"


# ----------------------------------------------------------------------------- CLI


def format_report(r: dict) -> str:
    m, mesh = r["memory"], r["mesh"]
    n = r["num_slices"]
    chips = (f"{n} slices x {r['chips'] // n} chips {r['grid']}" if n > 1
             else f"{r['chips']} chips {r['grid']}")
    hosts = f"{r['hosts']} host" + ("s" if r["hosts"] > 1 else "")
    lines = [f"{r['name']} on {r['topology']} ({chips}, "
             f"{r['device_kind']}, {hosts}): mesh data={mesh['data']} "
             f"fsdp={mesh['fsdp']} tensor={mesh['tensor']}, batch {r['batch']} x "
             f"{r['seq_len']}, {r['params']:,} params, {r['dtype']}, remat {r['remat']}, "
             f"attention {r['attention']}",
             "  per chip            train step" + ("      eval step" if "eval" in r else "")]
    ev = r.get("eval", {}).get("memory", {})
    rows = [("parameters", m["params_bytes"], None), ("optimizer state", m["optimizer_bytes"],
            None), ("temporaries", m["temp_bytes"], ev.get("temp_bytes")),
            ("total", m["total_bytes"], ev.get("total_bytes"))]
    for label, train, evl in rows:
        extra = f"{human_bytes(evl):>15}" if evl else ""
        lines.append(f"  {label:<18}{human_bytes(train):>12}{extra}")
    verdict = "fits" if r["fits"] else "does NOT fit"
    lines.append(f"  HBM per chip {human_bytes(r['hbm_bytes'])}: {verdict}")
    f = r["flops"]
    lines.append(f"  FLOPs per step (all chips): XLA matmuls {f['xla_matmul']:.4g}, formula "
                 f"6N+12LHQT {f['formula']:.4g} (6N {f['formula_6n']:.4g}); XLA / "
                 f"{f['compared_with']} = {f['xla_over_formula']:.3f}")
    if r["kernels"]:
        lines.append(f"  Pallas kernel calls per step (per chip, not costed by XLA): "
                     f"{r['kernels']['tpu_custom_call']:.0f}")
    coll = ", ".join(f"{k} {v['count']:.0f} x ({human_bytes(v['bytes'])} in all)"
                     for k, v in sorted(r["collectives"].items())) or "none"
    lines.append(f"  collectives per step (per chip): {coll}")
    times = f"{r['compile_seconds']:.1f} s (train)"
    if "eval" in r:
        times += f" + {r['eval']['compile_seconds']:.1f} s (eval)"
    lines.append(f"  compiled in {times}; jax {r['jax']}, libtpu {r['libtpu']}")
    return "\n".join(lines)


def add_args(parser):
    add_config_arg(parser)
    parser.add_argument("--topology", required=True, metavar="TYPE",
                        help="TPU accelerator type as gcloud writes it: v5p-32, v5e-16 "
                             "(v5litepod-16), v6e-256, v4-32; or GEN:AxBxC (docs/tpu.md)")
    parser.add_argument("--num-slices", type=int, default=1,
                        help="multislice: this many slices, data-parallel over the DCN")
    parser.add_argument("--mesh", default="",
                        help="axis sizes, e.g. data=1,fsdp=-1 (default: config.mesh)")
    parser.add_argument("--no-eval", action="store_true", help="compile the train step only")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    config = args.config
    s = parse_topology(args.topology, args.num_slices)
    if args.mesh:
        with config.unlocked():
            config.mesh.update(sharding.parse_mesh(args.mesh))
    report = compile_config(config, s, eval_step=not args.no_eval)
    print(json.dumps(report) if args.json else format_report(report))
    if not report["fits"]:
        total = report["memory"]["total_bytes"]
        raise UserError(f"{config.name} does not fit {s.name}: {human_bytes(total)} per chip of "
                        f"{human_bytes(report['hbm_bytes'])} HBM")
    return 0
