"""Measures docs/memory.md's validation table: `gptjax plan --measure` (XLA:CPU's compiled buffer
sizes of the real train step) against the planner's closed form, one row per config.

    python launch/memory_table.py run [ROW ...]        # rows -> docs/memory/validation.jsonl
    python launch/memory_table.py markdown [ROW ...]   # the table, from that file

Each row is one `gptjax plan --device cpu --measure --json` subprocess on 8 virtual CPU devices,
with the layer stack scanned one group per iteration (`scan_unroll=1`, the layout the planner's
activation counts describe; docs/memory.md "The unrolled stack on CPU"). Rows already in the
file are skipped, so an interrupted run resumes; `--out FILE` writes elsewhere. The smoke rows run
at batch 32. Rows marked held out were measured after the planner's coefficients were fitted on
the others.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
from importlib.metadata import version

REPO = pathlib.Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "memory" / "validation.jsonl"
KEYS = {"data": "mesh.data", "fsdp": "mesh.fsdp", "tensor": "mesh.tensor",
        "batch_size": "train.batch_size", "grad_accum": "train.grad_accum",
        "seq_len": "data.seq_len", "max_seq_len": "model.max_seq_len", "remat": "model.remat",
        **{k: f"model.{k}" for k in ("d_model", "d_ff", "num_heads", "num_layers", "vocab_size")}}
SMOKE, GPT2 = "configs/smoke.py", "configs/gpt2.py:124m"
# (config, overrides as in the table, held out)
ROWS = [
    (SMOKE, "data=8", False),
    (SMOKE, "data=8 batch_size=64", False),
    (SMOKE, "data=8 max_seq_len=256 seq_len=256", False),
    (SMOKE, "data=8 d_model=256 d_ff=1024 num_heads=8", False),
    (SMOKE, "data=1 fsdp=8", False),
    (SMOKE, "data=4 tensor=2", False),
    (SMOKE, "data=8 remat=full", False),
    (SMOKE, "data=8 remat=save_dots", False),
    (SMOKE, "data=8 remat=save_proj", False),
    (SMOKE, "data=8 d_ff=2048", False),
    (SMOKE, "data=8 num_layers=8", False),
    (GPT2, "data=8 batch_size=8 seq_len=256", False),
    (GPT2, "data=1 fsdp=8 batch_size=8 seq_len=256", False),
    (SMOKE, "data=8 num_heads=8", False),
    (SMOKE, "data=8 vocab_size=8192", False),
    (GPT2, "data=8 batch_size=16 seq_len=256", False),
    (GPT2, "data=8 batch_size=16 seq_len=256 remat=full", False),
    (SMOKE, "data=8 remat=save_dots batch_size=64", False),
    (SMOKE, "data=8 remat=save_proj batch_size=64", False),
    (SMOKE, "data=8 remat=full batch_size=64", False),
    (SMOKE, "data=2 fsdp=4 d_model=192 d_ff=768 num_heads=6 seq_len=64 max_seq_len=64", True),
    (SMOKE, "data=4 tensor=2 d_model=256 d_ff=1024 num_heads=8", True),
    (GPT2, "data=1 fsdp=8 batch_size=16 seq_len=512 remat=full", True),
    (SMOKE, "data=8 batch_size=64 grad_accum=2", True),
]


def overrides(spec: str, table: str) -> list[str]:
    pairs = dict(kv.split("=", 1) for kv in table.split())
    mesh = {"data": "1", "fsdp": "1", "tensor": "1"}
    if spec == SMOKE:
        pairs.setdefault("batch_size", "32")
    args = [f"--config.{KEYS[k]}={v}" for k, v in {**mesh, **pairs}.items()]
    return [*args, "--config.model.scan_unroll=1"]


def measure(n: int) -> dict:
    spec, table, held_out = ROWS[n - 1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    cmd = [sys.executable, "-m", "gptjax", "plan", "--config", spec, *overrides(spec, table),
           "--device", "cpu", "--measure", "--json"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        sys.exit(f"row {n}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    plan = json.loads(line)
    return {"row": n, "config": spec, "overrides": table, "held_out": held_out,
            "mesh": plan["measured"]["mesh"],
            "tokens_per_device": int(plan["batch_per_device"] * plan["seq_len"]),
            "remat": plan["remat"], "measured_bytes": plan["measured"]["peak_bytes"],
            "estimate_bytes": plan["total_bytes"],
            "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, "
            f"{os.cpu_count()} cores", "jax": version("jax"), "flax": version("flax")}


def read(path: pathlib.Path) -> dict[int, dict]:
    if not path.exists():
        return {}
    return {r["row"]: r for r in map(json.loads, path.read_text().splitlines())}


def markdown(rows: list[dict]) -> str:
    mib = 2 ** 20
    lines = ["| # | config | overrides | mesh (d,f,t) | tokens/dev | remat | measured MiB | "
             "estimate MiB | error |", "|---|---|---|---|---|---|---|---|---|"]
    errors = [r["estimate_bytes"] / r["measured_bytes"] - 1 for r in rows]
    for r, error in zip(rows, errors, strict=True):
        name = "smoke" if r["config"] == SMOKE else r["config"].split("/")[-1].replace(".py", "")
        mesh = ",".join(str(r["mesh"].get(k, 1)) for k in ("data", "fsdp", "tensor"))
        lines.append(f"| {r['row']} | {name}{' (held out)' if r['held_out'] else ''} | "
                     f"{r['overrides']} | {mesh} | {r['tokens_per_device']} | {r['remat']} | "
                     f"{r['measured_bytes'] / mib:.1f} | {r['estimate_bytes'] / mib:.1f} | "
                     f"{error:+.1%} |")
    if errors:
        size = [abs(e) for e in errors]
        lines.append(f"\n{len(rows)} rows; largest error {max(size):.1%}, mean absolute "
                     f"{sum(size) / len(size):.1%}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run", "markdown"))
    parser.add_argument("rows", nargs="*", type=int, help="row numbers (default: all)")
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args(argv)
    wanted = args.rows or list(range(1, len(ROWS) + 1))
    if any(not 1 <= n <= len(ROWS) for n in wanted):
        parser.error(f"rows are 1..{len(ROWS)}")
    done = read(args.out)
    if args.action == "run":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for n in wanted:
            if n in done:
                continue
            done[n] = measure(n)
            with args.out.open("a") as f:
                f.write(json.dumps(done[n]) + "\n")
            print(markdown([done[n]]).splitlines()[2], flush=True)
    print(markdown([done[n] for n in wanted if n in done]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
