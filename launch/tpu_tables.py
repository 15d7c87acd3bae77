"""Measures docs/tpu.md's tables with `gptjax compile --json` (and `gptjax plan --json`).

    python launch/tpu_tables.py run [LABEL ...]   # compile the rows -> docs/tpu/compile.jsonl
    python launch/tpu_tables.py markdown [LABEL ...]  # the table (those rows), from that file
    python launch/tpu_tables.py estimate [LABEL ...]  # + the step-time estimate -> estimate.jsonl
    python launch/tpu_tables.py estimates [LABEL ...] # its table

Each row is one `gptjax compile --no-eval --json` subprocess (and `gptjax plan --estimate
--json` for the same mesh); rows already in the file are skipped, so an interrupted run resumes
where it stopped. Needs libtpu (`pip install -e '.[tpu]'`), no TPU.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "tpu"
sys.path.insert(0, str(REPO))

from gptjax.config.loader import load_module  # noqa: E402

GPT3 = load_module(str(REPO / "configs" / "gpt3.py"))
GEN_DEVICE = {"v5litepod": "v5e"}  # plan's --device of an accelerator type's generation


def gpt3(size, *overrides, label=""):
    return (label or size, f"configs/gpt3.py:{size}", GPT3.SLICES[size], list(overrides))


# (label, config, topology, overrides), in the order of the full table
ROWS = [
    gpt3("small"), gpt3("medium"), ("medium, v5p-8", "configs/gpt3.py:medium", "v5p-8", []),
    gpt3("large"), gpt3("xl"), gpt3("2.7b"), gpt3("6.7b"), gpt3("13b"), gpt3("175b"),
    gpt3("small", "--config.train.loss_chunk=0", label="small, loss_chunk=0"),
    gpt3("small", "--config.model.attention=xla", label="small, attention=xla"),
    gpt3("small", "--config.model.local_window=256", label="small, local_window=256"),
    gpt3("xl", "--config.model.attention=xla", label="xl, attention=xla"),
    ("gpt2-124m", "configs/gpt2.py:124m", "v5e-8", []),
    ("smoke", "configs/smoke.py", "v6e-4", []),
]
# MaxText's gpt3-6b shape under each remat policy (docs/tpu.md, side by side with MaxText)
MAXTEXT_ROWS = [gpt3("maxtext-6b", f"--config.model.remat={remat}", label=f"maxtext-6b, {remat}")
                for remat in ("full", "save_qkv", "save_proj")]


def gptjax(*args) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "gptjax", *args, "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(line)


def _labels(path: pathlib.Path) -> set[str]:
    """The labels of the rows already in `path`."""
    return {json.loads(ln)["label"] for ln in path.read_text().splitlines()} if path.exists() \
        else set()


def _record(path: pathlib.Path, row: dict, label: str, config: str, overrides, t0: float) -> None:
    """Appends one compiled row to `path`, with when, where and how long."""
    row.update(label=label, config=config, overrides=overrides, wall_seconds=time.time() - t0,
               date=time.strftime("%Y-%m-%d"), machine=f"{platform.machine()}, "
               f"{os.cpu_count()} cores", python=platform.python_version())
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"{label}: {row.get('error') or 'ok'} ({time.time() - t0:.0f} s)", flush=True)


def estimate(path: pathlib.Path, only: list[str]) -> None:
    """`gptjax compile --estimate-time` for every row not yet in `path` (or the labels given)."""
    done = _labels(path)
    rows = {row[0]: row for row in ROWS + MAXTEXT_ROWS}
    for label, config, topology, overrides in [rows[x] for x in only] if only else ROWS:
        if label in done:
            continue
        t0 = time.time()
        row = gptjax("compile", "--config", config, "--topology", topology, "--no-eval",
                     "--estimate-time", *overrides)
        _record(path, row, label, config, overrides, t0)


def estimates(path: pathlib.Path, only: list[str]) -> None:
    """The estimate rows of `path` as a table."""
    print("| row | slice | batch/chip | remat | uncorrected cost model s | estimated step s | "
          "of which splash at peak s | est. MFU | matmul FLOPs/chip: extrapolated / "
          "loop-weighted |")
    print("|---" * 9 + "|")
    rows = {json.loads(ln)["label"]: json.loads(ln) for ln in path.read_text().splitlines()}
    for label in [x for x in only or [row[0] for row in ROWS] if x in rows]:
        r = rows[label]
        if r.get("fits") is False:  # compile stops there: no time to estimate
            print(f"| {label} | {r['topology']} | does not fit: "
                  f"{r['memory']['total_bytes'] / 2 ** 30:.2f} GiB of "
                  f"{r['usable_bytes'] / 2 ** 30:.2f} GiB per chip |")
            continue
        if "estimate" not in r:
            print(f"| {label} | {r.get('topology', '')} | error: {r.get('error', '?')} |")
            continue
        e, mesh = r["estimate"], r["mesh"]
        print(f"| {label} | {r['topology']} | {r['batch'] // (mesh['data'] * mesh['fsdp']):g} | "
              f"{r['remat']} | {e['raw_optimal_seconds']:.3f} | {e['step_seconds']:.3f} | "
              f"{e['attention_seconds']:.3f} | {e['mfu']:.3f} | "
              f"{e['extrapolated_matmul_flops'] / e['loop_weighted_matmul_flops']:.4f} |")
    r = next(r for r in rows.values() if "jax" in r)
    print(f"\nMeasured {r['date']} on {r['machine']} (Python {r['python']}, jax {r['jax']}, "
          f"libtpu {r['libtpu']}).")


def run(path: pathlib.Path, only: list[str]) -> None:
    """Compiles every row not yet in `path` (or only the labels given) and appends it."""
    done = _labels(path)
    for label, config, topology, overrides in ROWS:
        if label in done or (only and label not in only):
            continue
        t0 = time.time()
        row = gptjax("compile", "--config", config, "--topology", topology, "--no-eval",
                     *overrides)
        if "mesh" in row:  # the closed-form planner for the same mesh and chip
            gen = topology.split("-")[0]
            mesh = ",".join(f"{k}={v}" for k, v in row["mesh"].items())
            row["plan"] = gptjax("plan", "--config", config, "--mesh", mesh, "--device",
                                 GEN_DEVICE.get(gen, gen), "--estimate", *overrides)
        _record(path, row, label, config, overrides, t0)


def _gib(n) -> str:
    return f"{n / 2 ** 30:.1f}"


def markdown(path: pathlib.Path, only: list[str]) -> None:
    """The rows of `path` (only those labelled `only`, in that order, if given) as a table."""
    print("| row | slice | mesh (d,f,t) | batch/chip | remat | attention | params GiB | "
          "optimizer GiB | temporaries GiB | total GiB | HBM GiB | fits | XLA / formula | "
          "compile s | plan GiB | plan / compiler |")
    print("|---" * 16 + "|")
    rows = {json.loads(ln)["label"]: json.loads(ln) for ln in path.read_text().splitlines()}
    for label in [x for x in only or [row[0] for row in ROWS] if x in rows]:
        r = rows[label]
        if "error" in r:
            print(f"| {r['label']} | {r['topology'] if 'topology' in r else ''} | error: "
                  f"{r['error']} |")
            continue
        m, f, mesh, p = r["memory"], r["flops"], r["mesh"], r.get("plan", {})
        plan = p.get("total_bytes", 0)
        cells = [r["label"], r["topology"], f"{mesh['data']},{mesh['fsdp']},{mesh['tensor']}",
                 f"{r['batch'] // (mesh['data'] * mesh['fsdp']):g}", r["remat"], r["attention"],
                 _gib(m["params_bytes"]), _gib(m["optimizer_bytes"]), _gib(m["temp_bytes"]),
                 _gib(m["total_bytes"]), _gib(r["hbm_bytes"]), "yes" if r["fits"] else "no",
                 f"{f['xla_over_formula']:.3f} ({f['compared_with']})",
                 f"{r['compile_seconds']:.0f}", _gib(plan) if plan else "-",
                 f"{plan / m['total_bytes']:.2f}" if plan else "-"]
        print("| " + " | ".join(cells) + " |")
    r = next(r for r in rows.values() if "jax" in r)
    print(f"\nMeasured {r['date']} on {r['machine']} (Python {r['python']}, jax {r['jax']}, "
          f"libtpu {r['libtpu']}).")


if __name__ == "__main__":
    out = OUT / "compile.jsonl"
    if sys.argv[1:2] == ["run"]:
        OUT.mkdir(parents=True, exist_ok=True)
        run(out, sys.argv[2:])
    elif sys.argv[1:2] == ["estimate"]:
        estimate(OUT / "estimate.jsonl", sys.argv[2:])
    elif sys.argv[1:2] == ["estimates"]:
        estimates(OUT / "estimate.jsonl", sys.argv[2:])
    else:
        markdown(out, sys.argv[2:])
