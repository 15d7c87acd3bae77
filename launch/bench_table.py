#!/usr/bin/env python3
"""Turns `gptjax bench --json` lines (launch/gpu_bench.sh's bench.jsonl) into the markdown
table of docs/performance.md.

    python launch/bench_table.py runs/bench/bench.jsonl > table.md
"""

from __future__ import annotations

import json
import sys

COLUMNS = ("run", "device", "params", "batch x T", "dtype / attention / remat", "tokens/s",
           "ms/step", "TFLOP/s/dev", "MFU", "peak mem")


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def row(r: dict) -> list[str]:
    if "error" in r:
        return [r.get("tag", "?"), "", "", "", "", "failed: " + r["error"][:60], "", "", "", ""]
    mem = r.get("peak_memory_bytes") or r.get("xla_memory_bytes")
    mem_s = f"{mem / 2 ** 30:.1f} GiB" if mem else "n/a"
    if not r.get("peak_memory_bytes") and mem:
        mem_s += " (XLA est.)"
    mfu = f"{r['mfu']:.1f}%" if "mfu" in r else "n/a"
    return [r.get("tag") or r["name"], f"{r['num_devices']}x {r['device_kind']}",
            _fmt_params(r["params"]), f"{r['batch_size']} x {r['seq_len']}",
            f"{r['dtype']} / {r['attention']} / {r['remat']}"
            + (" / adam " + r["optimizer_state_dtype"]
               if r.get("optimizer_state_dtype", "float32") != "float32" else ""),
            f"{r['tokens_per_s']:,.0f}", f"{r['step_ms']:.1f}", f"{r['tflops_per_device']:.1f}",
            mfu, mem_s]


def table(results: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in results]
    first = next((r for r in results if "versions" in r), None)
    if first:
        v = first["versions"]
        lines.append("")
        lines.append(f"Measured {first['date']} with jax {v['jax']}, flax {v['flax']}, "
                     f"optax {v['optax']}, Python {v['python']}; {first['steps']} timed steps "
                     f"after {first['warmup']} warm-up steps, synthetic tokens.")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        results = [json.loads(line) for line in f if line.strip()]
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
