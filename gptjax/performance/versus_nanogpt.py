"""gptjax's train step against nanoGPT's on the same shape and CPU cores:
`gptjax bench --against nanogpt` (gptjax/commands/measure/bench.py).

    gptjax bench --config configs/smoke.py --against nanogpt --windows 8 --steps 5

Two worker processes of one process tree build their step once: gptjax's real jitted train
step (`step_bench.StepRunner`, as `gptjax train` builds it, on CPU) and nanoGPT's model with
its AdamW in torch eager (`nanogpt_step.NanoGPTRunner`, nanoGPT imported from its checkout).
Same layers, heads, width, vocabulary (gptjax's padded one), sequence length, batch, dropout 0,
float32, AdamW betas / eps / weight decay / clipping, and the same CPUs: both workers are pinned
to the first `--threads` CPUs this process may use (all by default), XLA sizes its thread pool
by them and torch gets as many threads. The
parent then alternates timed windows of `--steps` steps, ABBA (gptjax, nanoGPT, nanoGPT,
gptjax, ...): only one side runs at a time (the other waits on its pipe), and a load that
comes and goes on a shared machine falls on both alike. Reported: the median ms/iter of each
side over the windows, its range, the CPU time per iteration (all of the worker's threads,
spinning ones included: steadier than wall time on a loaded machine), and the ratio
gptjax / nanoGPT of the wall-time medians.

Processes rather than one interpreter: torch's OpenMP pool and XLA's thread pool would
otherwise share one process, and a spinning idle pool of one would tax the other.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import multiprocessing
import os
import platform
import statistics
import time

from gptjax.config import loader
from gptjax.errors import UserError
from gptjax.model.gpt import GPTConfig

DEFAULT_NANOGPT_DIR = "../shared/anchors/nanogpt"


def shape_of(config) -> dict:
    """The shape both sides run, from a gptjax config; one that nanoGPT's model cannot
    express (it has learned positions, tied embeddings, d_ff = 4 d_model, heads x head_dim =
    d_model, dense attention) is a UserError."""
    c = GPTConfig.from_config(config.model, backend="cpu")
    problems = [msg for bad, msg in (
        (c.num_heads * c.head_dim != c.d_model, "num_heads x head_dim != d_model"),
        (c.d_ff != 4 * c.d_model, "d_ff != 4 x d_model"),
        (c.position != "learned", f"position={c.position}"),
        (not c.tie_embeddings, "untied embeddings"),
        (c.local_window > 0, "local attention"),
        (c.mup, "muP"),
        (c.dtype.__name__ != "float32", "a compute dtype other than float32"),
        (int(config.train.grad_accum) != 1, "grad_accum > 1"),
    ) if bad]
    if problems:
        raise UserError(f"--against nanogpt: nanoGPT's model cannot run this config "
                        f"({', '.join(problems)})")
    o = config.optim
    return {"layers": c.num_layers, "heads": c.num_heads, "d_model": c.d_model,
            "vocab": c.padded_vocab, "seq_len": int(config.data.seq_len),
            "batch": int(config.train.batch_size), "bias": bool(c.use_bias),
            "lr": float(o.lr), "b1": float(o.b1), "b2": float(o.b2), "eps": float(o.eps),
            "weight_decay": float(o.weight_decay), "grad_clip": float(o.grad_clip)}


def _serve(kind: str, setup: dict, conn) -> None:
    """A worker: builds its side, warms it up, then times `n` steps for each `n` received."""
    try:
        os.sched_setaffinity(0, setup["cpus"])  # before a runtime sizes its thread pool
        if kind == "gptjax":
            import jax  # the worker owns its runtime: CPU, whatever accelerator is present

            jax.config.update("jax_platforms", "cpu")
            runner = importlib.import_module("gptjax.performance.step_bench").StepRunner(
                loader.from_dict(setup["config"]), setup["seed"])
            info = {"version": jax.__version__, "compile_s": runner.compile_s,
                    "xla_flags": os.environ.get("XLA_FLAGS", ""),
                    "scan_layers": runner.model_config.scan_layers}
        else:  # torch is an optional extra: imported only in its worker
            module = importlib.import_module("gptjax.performance.nanogpt_step")
            runner = module.NanoGPTRunner(setup["nanogpt_dir"], setup["shape"],
                                          len(setup["cpus"]), setup["seed"])
            info = {"version": module.torch.__version__}
        runner.run(setup["warmup"])
        conn.send(("ready", info))
        while (n := conn.recv()) is not None:
            cpu = time.process_time()  # every thread of the worker: its share of the cores
            wall = runner.run(n)
            conn.send(("seconds", (wall, time.process_time() - cpu)))
        conn.send(("loss", runner.loss))
    except UserError as e:
        conn.send(("error", str(e)))
    finally:
        conn.close()


class _Worker:
    def __init__(self, kind: str, setup: dict):
        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked XLA threads
        self.kind = kind
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(kind, setup, child), daemon=True)
        self.process.start()
        child.close()

    def reply(self, expected: str):
        try:
            tag, value = self.conn.recv()
        except EOFError:
            self.process.join(10)
            raise UserError(f"--against nanogpt: the {self.kind} worker exited "
                            f"(status {self.process.exitcode})") from None
        if tag == "error":
            raise UserError(value)
        assert tag == expected, (tag, expected)
        return value

    def close(self):
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(10)


def _summary(seconds: list[tuple[float, float]], steps: int) -> dict:
    ms = [1e3 * wall / steps for wall, _ in seconds]
    cpu = [1e3 * c / steps for _, c in seconds]
    return {"ms_per_iter": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
            "cpu_ms_per_iter": statistics.median(cpu), "windows_ms": ms, "windows_cpu_ms": cpu}


def compare(config, nanogpt_dir: str = DEFAULT_NANOGPT_DIR, windows: int = 8, steps: int = 5,
            warmup: int = 3, threads: int = 0, seed: int = 0) -> dict:
    """Alternating timed windows of gptjax's and nanoGPT's step; see the module docstring."""
    if windows < 2 or steps < 1 or warmup < 0:
        raise UserError(f"--windows={windows} must be >= 2, --steps={steps} >= 1 and "
                        f"--warmup={warmup} >= 0")
    if importlib.util.find_spec("torch") is None:
        raise UserError("--against nanogpt needs torch: pip install 'gptjax[interop-test]'")
    nanogpt_dir = os.path.abspath(nanogpt_dir)
    if not os.path.isfile(os.path.join(nanogpt_dir, "model.py")):
        raise UserError(f"--nanogpt-dir={nanogpt_dir}: no nanoGPT model.py there (a checkout "
                        f"of github.com/karpathy/nanoGPT)")
    shape = shape_of(config)
    allowed = sorted(os.sched_getaffinity(0))
    if not 0 <= threads <= len(allowed):
        raise UserError(f"--threads={threads}: this process may use {len(allowed)} CPUs")
    cpus = allowed[:threads or len(allowed)]
    threads = len(cpus)
    common = {"seed": seed, "warmup": warmup, "cpus": cpus}
    workers = {}
    try:  # built one after the other: a compile does not slow the other side's warm-up
        workers["gptjax"] = _Worker("gptjax", {**common, "config": loader.to_dict(config)})
        info = {"gptjax": workers["gptjax"].reply("ready")}
        workers["nanogpt"] = _Worker("nanogpt", {**common, "nanogpt_dir": nanogpt_dir,
                                                 "shape": shape})
        info["nanogpt"] = workers["nanogpt"].reply("ready")
        seconds = {"gptjax": [], "nanogpt": []}
        for w in range(windows):
            order = ("gptjax", "nanogpt") if w % 4 in (0, 3) else ("nanogpt", "gptjax")
            for kind in order:
                workers[kind].conn.send(steps)
                seconds[kind].append(workers[kind].reply("seconds"))
        losses = {}
        for kind, worker in workers.items():
            worker.conn.send(None)
            losses[kind] = worker.reply("loss")
    finally:
        for worker in workers.values():
            worker.close()
    jx, nano = _summary(seconds["gptjax"], steps), _summary(seconds["nanogpt"], steps)
    return {
        "name": config.name,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "shape": shape,
        "windows": windows, "steps": steps, "warmup": warmup,
        "gptjax": {**jx, **info["gptjax"], "loss": losses["gptjax"]},
        "nanogpt": {**nano, **info["nanogpt"], "loss": losses["nanogpt"],
                    "dir": nanogpt_dir},
        "ratio": jx["ms_per_iter"] / nano["ms_per_iter"],
        "cpu_ratio": jx["cpu_ms_per_iter"] / nano["cpu_ms_per_iter"],
    }


def format_result(r: dict) -> str:
    s, jx, nano = r["shape"], r["gptjax"], r["nanogpt"]
    layout = "scanned" if jx["scan_layers"] else "unrolled"
    return (f"{r['name']} vs nanoGPT on CPU ({r['threads']} threads of {r['cpu_count']}): "
            f"batch {s['batch']} x {s['seq_len']}, {s['layers']} layers, d_model "
            f"{s['d_model']}, vocab {s['vocab']}, float32, AdamW; {r['windows']} alternating "
            f"windows of {r['steps']} steps\n"
            + "".join(f"  {label}: {x['ms_per_iter']:.1f} ms/iter (median; windows "
                      f"{x['min_ms']:.1f}-{x['max_ms']:.1f}), CPU {x['cpu_ms_per_iter']:.1f} "
                      f"ms/iter\n" for label, x in (
                          (f"gptjax  (jax {jx['version']}, {layout} layers)", jx),
                          (f"nanoGPT (torch {nano['version']} eager)", nano)))
            + f"  ratio gptjax / nanoGPT: {r['ratio']:.2f} (CPU time {r['cpu_ratio']:.2f})  "
              f"({r['date']})")
