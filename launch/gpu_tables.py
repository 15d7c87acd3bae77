"""Measures docs/gpu.md's table with `gptjax compile --json` on compile-only GPUs.

    python launch/gpu_tables.py [LABEL ...]   # compile the rows (or those labels), print the table

Each row is one `gptjax compile --no-eval --json` subprocess for the cluster its config is
for (configs/gpt3_gpu.py's CLUSTERS). Needs the CUDA plugin (`pip install -e '.[gpu-compile]'`),
no GPU.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gptjax.config.loader import load_module  # noqa: E402

GPU = load_module(str(REPO / "configs" / "gpt3_gpu.py"))
GB = 1e9
# (label, config, cluster)
ROWS = [("gpt2-124m", "configs/gpt2.py:124m", "h100-1"),
        ("gpt2-124m", "configs/gpt2.py:124m", "h200-1"),
        *[(v, f"configs/gpt3_gpu.py:{v}", c) for v, c in GPU.CLUSTERS.items()]]


def compile_row(config: str, cluster: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "gptjax", "compile", "--config", config,
                           "--topology", cluster, "--no-eval", "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(line)


def markdown_row(label: str, cluster: str, r: dict) -> str:
    if "error" in r:
        return f"| {label} | {cluster} | {r['error']} |"
    m, f = r["memory"], r["flops"]
    micro = r["batch"] // r["grad_accum"] // r["chips"]
    coll = ", ".join(f"{k} {v['count']:.0f}" for k, v in sorted(r["collectives"].items()))
    kernels = " + ".join(f"{v:.0f}" for _, v in sorted(r["kernels"].items())) or "none"
    return (f"| {label} | {cluster} | {r['mesh']['fsdp']} | {r['batch']} = {r['grad_accum']} x "
            f"{micro}/GPU | {r['remat']} | {m['params_bytes'] / GB:.2f} | "
            f"{m['optimizer_bytes'] / GB:.2f} | {m['temp_bytes'] / GB:.2f} | "
            f"{m['total_bytes'] / GB:.2f} / {r['usable_bytes'] / GB:.1f} | "
            f"{'yes' if r['fits'] else 'NO'} | {f['xla_over_formula']:.3f} | {coll or 'none'} | "
            f"{kernels} | {r['compile_seconds']:.1f} |")


def main(only: list[str]) -> None:
    print("| config | cluster | fsdp | batch = accum x micro | remat | params GB | optimizer GB "
          "| temp GB | total / usable GB | fits | XLA / 6N | collectives per step | cuDNN fmha "
          "fwd + bwd | compile s |")
    print("|" + "---|" * 14)
    for label, config, cluster in ROWS:
        if only and label not in only:
            continue
        print(markdown_row(label, cluster, compile_row(config, cluster)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
