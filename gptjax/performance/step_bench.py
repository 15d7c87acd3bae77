"""Times the real jitted train step on synthetic tokens: the library behind `gptjax bench`
(gptjax/commands/measure/bench.py).

    gptjax bench --config configs/gpt2.py:124m --config.train.batch_size=16 --steps 20 --json

It builds the train state and step exactly as `gptjax train` does (`gptjax.training.train`), feeds
random tokens already on the devices (no input pipeline, no TensorFlow), compiles, runs
`--warmup` steps, then times `--steps` steps with one device sync at the end. Reported:
tokens/s, ms per step, model TFLOP/s per device (6N + 12LHQT per token, as `gptjax info`),
MFU where the device's peak is known (`gptjax.hardware.devices.DEVICES`), peak device memory
where the runtime tracks it (`device.memory_stats()`; not on CPU), XLA's compiled
memory estimate, and the software versions.
"""

from __future__ import annotations

import datetime
import os
import platform
import time

import flax
import jax
import jaxlib
import numpy as np
import optax

from gptjax.errors import UserError
from gptjax.hardware.devices import peak_flops, throughput
from gptjax.model.flops import model_stats
from gptjax.model.gpt import GPT
from gptjax.parallel import distributed, sharding
from gptjax.training import state as train_state
from gptjax.training.optim import make_optimizer
from gptjax.training.state import abstract_train_state, create_train_state, model_config
from gptjax.training.steps import make_train_step


def _versions() -> dict:
    out = {"python": platform.python_version(), "jax": jax.__version__,
           "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__}
    try:
        out["backend"] = jax.extend.backend.get_backend().platform_version
    except Exception:  # not every jax has jax.extend.backend; the version is a nicety
        pass
    return out


def _peak_memory(devices) -> int | None:
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


class StepRunner:
    """The real jitted train step of `config`, compiled, with its state and one batch of
    random tokens already on the devices: `run(n)` times n steps (one sync at the end)."""

    def __init__(self, config, seed: int = 0):
        distributed.maybe_initialize(config)
        self.mesh = mesh = sharding.make_mesh(config.mesh)
        sharding.check_config(config, mesh)
        self.model_config = c = model_config(config)
        model = GPT(c)
        tx = make_optimizer(config)
        t0 = time.perf_counter()
        _, shardings = abstract_train_state(config, mesh, model, tx)
        self.state = create_train_state(config, mesh, model, tx, shardings)
        step_fn = make_train_step(config, mesh, shardings, model, tx)

        self.batch_size, self.seq_len = int(config.train.batch_size), int(config.data.seq_len)
        rng = np.random.default_rng(seed + jax.process_index())
        rows = self.batch_size // jax.process_count()
        tokens = rng.integers(0, c.vocab_size, size=(rows, self.seq_len + 1), dtype=np.int32)
        self.batch = sharding.global_batch(
            {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, mesh)
        with jax.set_mesh(mesh):
            self.compiled = step_fn.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - t0
        self.metrics = None

    def run(self, steps: int) -> float:
        """Seconds for `steps` train steps, from dispatch to the last result on the host."""
        with jax.set_mesh(self.mesh):
            jax.block_until_ready(self.state)
            t0 = time.perf_counter()
            for _ in range(steps):
                self.state, self.metrics = self.compiled(self.state, self.batch)
            jax.block_until_ready((self.state, self.metrics))
            return time.perf_counter() - t0

    @property
    def loss(self) -> float:
        return float(jax.device_get(self.metrics["loss"]))


def bench(config, steps: int = 10, warmup: int = 2, seed: int = 0) -> dict:
    """Times `steps` train steps of `config` after compiling and `warmup` steps."""
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps={steps} must be >= 1 and --warmup={warmup} >= 0")
    runner = StepRunner(config, seed)
    if warmup:
        runner.run(warmup)
    elapsed = runner.run(steps)
    loss = runner.loss
    c, mesh, compiled = runner.model_config, runner.mesh, runner.compiled
    B, T, compile_s = runner.batch_size, runner.seq_len, runner.compile_s

    devices = jax.devices()
    kind = devices[0].device_kind
    stats = model_stats(c, T, train_state.optimizer_state_bytes(config))
    tokens_per_s = steps * B * T / elapsed
    result = {
        "name": config.name,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "device_kind": kind,
        "platform": devices[0].platform,
        "num_devices": len(devices),
        "num_processes": jax.process_count(),
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "params": stats["params"],
        "batch_size": B,
        "seq_len": T,
        "grad_accum": int(config.train.grad_accum),
        "dtype": np.dtype(c.dtype).name,
        "attention": c.attention,
        "remat": c.remat,
        "optimizer_state_dtype": config.optim.state_dtype,
        "optimizer_state_bytes": stats["adam_state_bytes"],
        "steps": steps,
        "warmup": warmup,
        "compile_s": compile_s,
        "step_ms": 1e3 * elapsed / steps,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": stats["flops_per_token"],
        "loss": loss,
        "peak_memory_bytes": _peak_memory(jax.local_devices()),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": _versions(),
    }
    result.update(throughput(tokens_per_s, stats["flops_per_token"], len(devices), kind))
    result["peak_tflops_per_device"] = (peak_flops(kind) or 0) / 1e12 or None
    ma = compiled.memory_analysis()
    if ma is not None:
        result["xla_memory_bytes"] = int(ma.argument_size_in_bytes + ma.output_size_in_bytes
                                         - ma.alias_size_in_bytes + ma.temp_size_in_bytes)
    return result


def format_result(r: dict) -> str:
    mem = r.get("peak_memory_bytes") or r.get("xla_memory_bytes")
    mem_label = "peak memory" if r.get("peak_memory_bytes") else "XLA memory estimate"
    mfu = (f", MFU {r['mfu']:.1f}%" if "mfu" in r
           else " (no MFU: peak FLOP/s of this device unknown)")
    return (f"{r['name']}: {r['num_devices']} x {r['device_kind']}, mesh {r['mesh']}, batch "
            f"{r['batch_size']} x {r['seq_len']}, {r['dtype']}, attention {r['attention']}, "
            f"remat {r['remat']}\n"
            f"  {r['tokens_per_s']:,.0f} tokens/s, {r['step_ms']:.1f} ms/step, "
            f"{r['tflops_per_device']:.3g} TFLOP/s per device{mfu}\n"
            f"  compile {r['compile_s']:.1f}s, loss {r['loss']:.3f}"
            + (f", {mem_label} {mem / 2 ** 20:,.1f} MiB per device" if mem else "")
            + f"\n  jax {r['versions']['jax']}, flax {r['versions']['flax']}, {r['date']}")
