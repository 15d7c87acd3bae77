"""MaxText's estimated step time and MFU, by its own compile command, for docs/tpu.md's side by
side with gptjax on the same shape (MaxText `gpt3-6b`, gptjax `configs/gpt3.py:maxtext-6b`).

    python launch/maxtext_compare.py run MAXTEXT_PYTHON [REMAT ...]  # -> docs/tpu/maxtext.jsonl
    python launch/maxtext_compare.py table                            # that file as a table

MAXTEXT_PYTHON is the interpreter of a separate virtualenv with MaxText installed (MaxText needs
Python >= 3.12; gptjax never imports it). Each compile is MaxText's documented AOT command,

    MAXTEXT_PYTHON -m maxtext.trainers.pre_train.train_compile src/maxtext/configs/base.yml
        compile_topology=v5p-64 compile_topology_num_slices=1 model_name=gpt3-6b
        override_model_config=True per_device_batch_size=32 max_target_length=2048
        run_name=... remat_policy=REMAT [+ the loop-free options below]

with XLA dumping the optimized HLO (`--xla_dump_to`), which gptjax/hardware/hlo.py reads like
gptjax's own. The estimate is gptjax's (gptjax/performance/step_time.py), unchanged: the step as
MaxText ships it (scanned layers), then the loop-free step (`scan_layers=False`,
`num_decoder_layers=2, 4, 8`, the windowed-einsum threshold raised through MaxText's
`compile_xla_flags`; MaxText's loss is one block by default) fitted in the depth, splash
attention's FLOPs at peak, the time scaled by loop-weighted over extrapolated matmul FLOPs.
MFU uses gptjax's 6N + 12LHQT of the same shape (`configs/gpt3.py:maxtext-6b`).
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gptjax.config.loader import load_config  # noqa: E402
from gptjax.hardware import hlo  # noqa: E402
from gptjax.hardware.devices import DEVICES  # noqa: E402
from gptjax.hardware.tpu_slices import parse_topology  # noqa: E402
from gptjax.model.flops import flops_per_token, param_counts  # noqa: E402
from gptjax.model.gpt import GPTConfig  # noqa: E402
from gptjax.performance import step_time  # noqa: E402

OUT = REPO / "docs" / "tpu" / "maxtext.jsonl"
COMPILES = OUT.with_name("maxtext_compiles.jsonl")  # each compile, so a rerun resumes
TOPOLOGY, MODEL, SHAPE = "v5p-64", "gpt3-6b", "configs/gpt3.py:maxtext-6b"
PER_DEVICE_BATCH, SEQ = 32, 2048
REMATS = ("full", "save_out_proj", "save_qkv_proj")
MODULE = "maxtext.trainers.pre_train.train_compile"
NO_WINDOWED_EINSUM = " ".join(f"--{k}={v}" for k, v in step_time.NO_WINDOWED_EINSUM.items())


def command(python: str, remat: str, layers: int | None = None) -> list[str]:
    """MaxText's compile command for `remat`; with `layers`, its loop-free variant."""
    argv = [python, "-m", MODULE, "src/maxtext/configs/base.yml", f"compile_topology={TOPOLOGY}",
            "compile_topology_num_slices=1", f"model_name={MODEL}", "override_model_config=True",
            f"per_device_batch_size={PER_DEVICE_BATCH}", f"max_target_length={SEQ}",
            f"run_name=gptjax_compare_{remat}_{layers or 'scanned'}", f"remat_policy={remat}"]
    if layers:
        argv += ["scan_layers=False", f"base_num_decoder_layers={layers}",
                 f"compile_xla_flags={NO_WINDOWED_EINSUM}"]
    return argv


def parse_output(stdout: str) -> dict:
    """train_compile's closing lines -> its cost analysis and memory (per device)."""
    cost = re.search(r"^Cost analysis: (.*)$", stdout, re.M)
    memory = re.search(r"^Memory analysis: (.*)$", stdout, re.M)
    if not cost or not memory:
        raise RuntimeError("MaxText's train_compile printed no cost / memory analysis")
    ca = ast.literal_eval(cost.group(1).replace("nan", "None"))
    ca = ca[0] if isinstance(ca, list) else ca
    fields = {k: int(v) for k, v in re.findall(r"(\w+)_size_in_bytes=(\d+)", memory.group(1))}
    total = fields["argument"] + fields["output"] - fields["alias"] + fields["temp"]
    return {"cost_analysis": {k: float(ca[k]) for k in ("flops", "optimal_seconds")
                              if ca.get(k) is not None},
            "memory": {**{f"{k}_bytes": v for k, v in fields.items()}, "total_bytes": total}}


def train_step_hlo(dump: pathlib.Path) -> str:
    """The optimized HLO of the train step among XLA's dump files."""
    files = sorted(dump.glob("*jit_train_step*after_optimizations.txt"),
                   key=lambda p: p.stat().st_size)
    if not files:
        raise RuntimeError(f"no optimized jit_train_step HLO in {dump}")
    return files[-1].read_text()


def compile_once(python: str, remat: str, layers: int | None) -> dict:
    """One MaxText compile -> its cost, memory and HLO statistics."""
    with tempfile.TemporaryDirectory() as dump:
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
               # no TPU here: skip the metadata server, and libtpu's lock (as gptjax compile)
               "TPU_SKIP_MDS_QUERY": "1", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
               "XLA_FLAGS": f"--xla_dump_to={dump} --xla_dump_hlo_module_re=jit_train_step"}
        t0 = time.time()
        proc = subprocess.run(command(python, remat, layers), env=env, capture_output=True,
                              text=True, cwd=dump)
        if proc.returncode:
            log = pathlib.Path(tempfile.gettempdir()) / f"maxtext_{remat}_{layers}.log"
            log.write_text(proc.stdout + proc.stderr)
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"MaxText's compile failed (exit {proc.returncode}): {tail} "
                               f"(all of its output: {log})")
        out = parse_output(proc.stdout)
        stats = hlo.analyze(train_step_hlo(pathlib.Path(dump)))
    out.update(matmul_flops=stats["matmul_flops"], collectives=stats["collectives"],
               kernels={k: v for k, v in stats["custom_calls"].items()
                        if k == "tpu_custom_call"}, compile_seconds=time.time() - t0)
    return out


def compiled(python: str, remat: str, layers: int | None) -> dict:
    """compile_once, or its record in COMPILES from an earlier run."""
    key = {"remat": remat, "layers": layers}
    for line in COMPILES.read_text().splitlines() if COMPILES.exists() else []:
        if {k: json.loads(line)[k] for k in key} == key:
            return json.loads(line)
    out = {**key, **compile_once(python, remat, layers)}
    with COMPILES.open("a") as f:
        f.write(json.dumps(out) + "\n")
    return out


def estimate(python: str, remat: str) -> dict:
    """The real step and its three loop-free variants -> gptjax's estimate of MaxText's step."""
    s = parse_topology(TOPOLOGY)
    c = GPTConfig.from_config(load_config(SHAPE).model)
    tokens = PER_DEVICE_BATCH * s.chips * SEQ
    total = flops_per_token(c, SEQ) * tokens
    six_n = 6 * param_counts(c)["flops_params"] * tokens
    full = compiled(python, remat, None)
    points = []
    for layers in step_time.LAYERS:
        p = compiled(python, remat, layers)
        points.append({"layers": layers, "seconds": p["cost_analysis"]["optimal_seconds"],
                       "matmul_flops": p["matmul_flops"]})
    report = {"chips": s.chips, "attention": "splash" if full["kernels"] else "xla",
              "kernels": full["kernels"], "cost_analysis": full["cost_analysis"],
              "flops": {"formula": total, "formula_attention": total - six_n,
                        "xla_matmul": full["matmul_flops"] * s.chips}}
    e = step_time.summarize(points, report, depth=c.num_layers, accum=1,
                            peak=DEVICES[s.generation].peak_bf16_flops)
    return {"remat": remat, "topology": TOPOLOGY, "model": MODEL, "shape": SHAPE,
            "per_device_batch": PER_DEVICE_BATCH, "seq_len": SEQ, "memory": full["memory"],
            "kernels": full["kernels"], "collectives": full["collectives"],
            "compile_seconds": full["compile_seconds"], "estimate": e,
            "command": " ".join(command("python", remat)[1:])}


def versions(python: str) -> dict:
    code = ("import importlib.metadata as m, platform; print(platform.python_version(), "
            "*(m.version(p) for p in ('maxtext', 'jax', 'libtpu', 'flax', 'tokamax')))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return dict(zip(("python", "maxtext", "jax", "libtpu", "flax", "tokamax"),
                    out.stdout.split(), strict=True))


def run(python: str, remats: list[str]) -> None:
    done = {json.loads(ln)["remat"] for ln in OUT.read_text().splitlines()} if OUT.exists() \
        else set()
    for remat in remats or REMATS:
        if remat in done:
            continue
        t0 = time.time()
        row = {**estimate(python, remat), **versions(python), "date": time.strftime("%Y-%m-%d"),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "wall_seconds": time.time() - t0}
        with OUT.open("a") as f:
            f.write(json.dumps(row) + "\n")
        e = row["estimate"]
        print(f"MaxText {MODEL} remat={remat}: estimated step {e['step_seconds']:.3f} s, MFU "
              f"{e['mfu']:.3f}, {row['memory']['total_bytes'] / 2 ** 30:.1f} GiB per chip "
              f"({time.time() - t0:.0f} s)", flush=True)


def table() -> None:
    """docs/tpu/maxtext.jsonl as a table; then any remat policy whose compiles are only partly
    recorded (an interrupted `run` resumes from them)."""
    rows = [json.loads(ln) for ln in OUT.read_text().splitlines()] if OUT.exists() else []
    print("| MaxText remat | total GiB/chip | uncorrected cost model s | estimated step s | "
          "of which splash at peak s | est. MFU | matmul FLOPs/chip: extrapolated / "
          "loop-weighted |")
    print("|---" * 7 + "|")
    for r in rows:
        e = r["estimate"]
        print(f"| {r['remat']} | {r['memory']['total_bytes'] / 2 ** 30:.1f} | "
              f"{e['raw_optimal_seconds']:.3f} | {e['step_seconds']:.3f} | "
              f"{e['attention_seconds']:.3f} | {e['mfu']:.3f} | "
              f"{e['extrapolated_matmul_flops'] / e['loop_weighted_matmul_flops']:.4f} |")
    if rows:
        r = rows[-1]
        print(f"\nMaxText {r['maxtext']} compiled {r['date']} on {r['machine']} (Python "
              f"{r['python']}, jax {r['jax']}, libtpu {r['libtpu']}, flax {r['flax']}, "
              f"tokamax {r['tokamax']}).")
    partial = [json.loads(ln) for ln in COMPILES.read_text().splitlines()] \
        if COMPILES.exists() else []
    for remat in sorted({c["remat"] for c in partial} - {r["remat"] for r in rows}):
        done = [c for c in partial if c["remat"] == remat]
        scanned = next((c for c in done if c["layers"] is None), None)
        gib = f", the step as shipped {scanned['memory']['total_bytes'] / 2 ** 30:.1f} GiB " \
              f"per chip" if scanned else ""
        print(f"\nremat={remat}: {len(done)} of {1 + len(step_time.LAYERS)} compiles recorded"
              f"{gib} (no estimate yet).")


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"] and len(sys.argv) >= 3:
        run(sys.argv[2], sys.argv[3:])
    elif sys.argv[1:2] == ["table"]:
        table()
    else:
        sys.exit("usage: maxtext_compare.py run MAXTEXT_PYTHON [REMAT ...] | table")
