"""Measures docs/tpu.md's tables with `gptjax compile --json` (and `gptjax plan --json`).

    python launch/tpu_tables.py run gpt3 attention loss plan   # appends to docs/tpu/*.jsonl
    python launch/tpu_tables.py markdown                        # the tables, from those files

Each row is one `gptjax compile` subprocess; rows already in the JSONL file are skipped, so an
interrupted run resumes where it stopped. Needs libtpu (`pip install -e '.[tpu]'`), no TPU.
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

from gptjax.config import load_module  # noqa: E402

GPT3 = load_module(str(REPO / "configs" / "gpt3.py"))
ORDER = ["small", "xl", "2.7b", "175b", "medium", "large", "6.7b", "13b"]
T2048 = ["--config.data.seq_len=2048"]
ROWS = {
    # (label, config, topology, overrides)
    "gpt3": [(size, f"configs/gpt3.py:{size}", GPT3.SLICES[size], []) for size in ORDER],
    "attention": [
        (f"{size} {attn}", f"configs/gpt3.py:{size}", GPT3.SLICES[size],
         [f"--config.model.attention={attn}"] + extra)
        for size in ("small", "xl") for attn in ("xla", "splash")
        for extra in ([], ["--config.model.local_window=256"])
        if not (extra and attn == "xla")],
    "loss": [(f"small loss_chunk={chunk}", "configs/gpt3.py:small", "v5p-8",
              [f"--config.train.loss_chunk={chunk}"]) for chunk in (0, 256)],
    "plan": [("gpt2-124m", "configs/gpt2.py:124m", "v5e-8", []),
             ("gpt2-350m", "configs/gpt2.py:350m", "v6e-8", []),
             ("small", "configs/gpt3.py:small", "v5p-8", []),
             ("medium", "configs/gpt3.py:medium", "v5p-8", []),
             ("large", "configs/gpt3.py:large", "v5p-16", []),
             ("xl", "configs/gpt3.py:xl", "v5p-32", []),
             ("2.7b", "configs/gpt3.py:2.7b", "v5p-32", []),
             ("xl v4", "configs/gpt3.py:xl", "v4-64", [])],
}
DEVICE = {"v4": "v4", "v5p": "v5p", "v5e": "v5e", "v6e": "v6e"}


def gptjax(*args) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "gptjax", *args, "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(line)


def run(table: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{table}.jsonl"
    done = {json.loads(ln)["label"] for ln in path.read_text().splitlines()} if path.exists() \
        else set()
    for label, config, topology, overrides in ROWS[table]:
        if label in done:
            continue
        t0 = time.time()
        row = gptjax("compile", "--config", config, "--topology", topology, *overrides)
        if table == "plan":
            gen = topology.split("-")[0].replace("v5litepod", "v5e")
            chips = row.get("chips", 0)
            mesh = ",".join(f"{k}={v}" for k, v in row.get("mesh", {}).items())
            row["plan"] = gptjax("plan", "--config", config, "--mesh", mesh, "--device",
                                 DEVICE[gen], "--num-devices", str(chips), *overrides)
        row.update(label=label, config=config, overrides=overrides, wall_seconds=time.time() - t0,
                   date=time.strftime("%Y-%m-%d"), machine=f"{platform.machine()} "
                   f"{os.cpu_count()} cores", python=platform.python_version())
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{table}: {label}: {row.get('error') or 'ok'} ({time.time() - t0:.0f} s)",
              flush=True)


def _gib(n) -> str:
    return f"{n / 2 ** 30:.1f}"


def markdown() -> None:
    for table in ROWS:
        path = OUT / f"{table}.jsonl"
        if not path.exists():
            continue
        print(f"\n### {table}\n")
        print("| row | slice | mesh (d,f,t) | remat | attention | params GiB | optimizer GiB | "
              "temporaries GiB | total GiB | HBM GiB | fits | XLA / formula | compile s |"
              + (" plan GiB | plan / compiler |" if table == "plan" else ""))
        print("|---" * (15 if table == "plan" else 13) + "|")
        for ln in path.read_text().splitlines():
            r = json.loads(ln)
            if "error" in r:
                print(f"| {r['label']} | error: {r['error']} |")
                continue
            m, f, mesh = r["memory"], r["flops"], r["mesh"]
            cells = [r["label"], r["topology"], f"{mesh['data']},{mesh['fsdp']},{mesh['tensor']}",
                     r["remat"], r["attention"], _gib(m["params_bytes"]),
                     _gib(m["optimizer_bytes"]), _gib(m["temp_bytes"]), _gib(m["total_bytes"]),
                     _gib(r["hbm_bytes"]), "yes" if r["fits"] else "no",
                     f"{f['xla_over_formula']:.3f} ({f['compared_with']})",
                     f"{r['compile_seconds']:.0f}"]
            if table == "plan":
                p = r["plan"].get("total_bytes", 0)
                cells += [_gib(p), f"{p / m['total_bytes']:.2f}"]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        for name in sys.argv[2:] or list(ROWS):
            run(name)
    else:
        markdown()
