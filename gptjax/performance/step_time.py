"""The TPU compiler's estimate of a train step's time and MFU (`gptjax compile --estimate-time`):
its cost model, corrected for loops. An estimate, never a measurement.

libtpu's `compiled.cost_analysis()` carries `optimal_seconds`, the cost model's time for one
step on one chip, but it counts every `while` body once: the scanned layer stack, the chunked
loss, gradient accumulation and XLA's collective-matmul loops inside the layers. So for a
scanned model it stays nearly flat in the depth. The correction here compiles loop-free
variants of the same step and extrapolates in the depth:

1. The micro-batch step (`train.grad_accum=1`, batch = one micro-batch) with the layers
   unrolled (`model.scan_layers=False`), the loss in one block (`train.loss_chunk=0`) and no
   windowed-einsum loops (libtpu's `xla_jf_spmd_threshold_for_windowed_einsum_mib` raised past
   any tensor) is compiled at LAYERS depths, on the same slice and mesh.
2. t(L) = a + b L is fitted to the cost model's seconds, and the same line to the HLO's matmul
   FLOPs (gptjax/hardware/hlo.py), then read at the config's depth. The FLOPs line is the
   check: at full depth it equals the loop-weighted matmul FLOPs of the real (scanned,
   chunked) step for a model without remat (tests/test_compile.py checks it). Under remat the
   unrolled stack does less: with remat=full XLA drops most of the layers' forward recompute
   (GPT-3 6.7B: 0.82 of the real step's matmul FLOPs). The time is then scaled by the real
   step's matmul FLOPs over the extrapolated ones (`flops_scale`): the missing work is assumed
   to run as efficiently as the rest.
3. Splash attention runs in Pallas kernels the cost model does not cost: their FLOPs
   (12 L H Q T per token, the MFU convention) are added at the chip's peak.
4. The step is grad_accum micro-batches (the optimizer update, counted in each, is small).

MFU = (6N + 12LHQT) x tokens / chips / peak / estimated step time.
"""

from __future__ import annotations

import copy

import numpy as np

from gptjax.errors import UserError
from gptjax.hardware import hlo
from gptjax.hardware.devices import DEVICES
from gptjax.hardware.tpu_slices import Slice
from gptjax.performance import aot

LAYERS = (2, 4, 8)
NO_WINDOWED_EINSUM = {"xla_jf_spmd_threshold_for_windowed_einsum_mib": 1_000_000}


def _loop_free(config, layers: int):
    """`config`'s micro-batch step with `layers` layers and no loops of its own."""
    c = copy.deepcopy(config)
    accum = int(config.train.grad_accum)
    with c.unlocked():
        c.model.num_layers = layers
        c.model.scan_layers = False
        c.train.loss_chunk = 0
        c.train.grad_accum = 1
        c.train.batch_size = int(config.train.batch_size) // accum
    return c


def _point(config, s: Slice, layers: int) -> dict:
    try:
        compiled, _ = aot.compile_train(_loop_free(config, layers), s, NO_WINDOWED_EINSUM)
    except Exception as e:  # a libtpu that does not know the flag: its windowed einsums stay
        if "No such compile option" not in str(e):
            raise
        compiled, _ = aot.compile_train(_loop_free(config, layers), s)
    cost = aot.cost_of(compiled)
    if "optimal_seconds" not in cost:
        raise UserError(f"--estimate-time: the compiler for {s.name} has no cost model")
    if cost["optimal_seconds"] <= 0:  # libtpu counts an op it cannot cost as -1 s (seen: the
        # async call XLA makes of a per-device gradient with one row per device)
        raise UserError(f"--estimate-time: the TPU cost model could not cost the {layers}-layer "
                        f"micro-batch step of this config on {s.name} (it returned "
                        f"{cost['optimal_seconds']:.3g} s); more rows per chip per micro-batch "
                        f"usually avoid it")
    return {"layers": layers, "seconds": cost["optimal_seconds"],
            "matmul_flops": hlo.analyze(compiled.as_text())["matmul_flops"]}


def _at(points: list[dict], key: str, layers: int) -> float:
    slope, intercept = np.polyfit([p["layers"] for p in points], [p[key] for p in points], 1)
    return float(intercept + slope * layers)


def estimate(config, s: Slice, report: dict) -> dict:
    """The estimate for `config` on slice `s`, given its `aot.compile_config` report."""
    if not isinstance(s, Slice):
        raise UserError("--estimate-time needs a TPU slice: XLA:GPU has no cost model")
    points = [_point(config, s, layers) for layers in LAYERS]
    return summarize(points, report, depth=int(config.model.num_layers),
                     accum=int(config.train.grad_accum),
                     peak=DEVICES[s.generation].peak_bf16_flops)


def summarize(points: list[dict], report: dict, depth: int, accum: int, peak: float) -> dict:
    """The loop-free compiles' `points` -> the step's estimate (module docstring)."""
    chips, flops = report["chips"], report["flops"]
    splash = report["attention"] == "splash" and report["kernels"]  # else XLA's, costed
    attention = flops["formula_attention"] / chips / peak if splash else 0.0
    extrapolated = accum * _at(points, "matmul_flops", depth)
    weighted = flops["xla_matmul"] / chips
    # Where the real step does more matmul work than its loop-free variants (remat's forward
    # recompute, which the unrolled stack loses), the time grows by the same factor.
    scale = max(1.0, weighted / extrapolated) if extrapolated > 0 else 1.0
    step = accum * _at(points, "seconds", depth) * scale + attention
    raw = report["cost_analysis"].get("optimal_seconds")
    per_chip = flops["formula"] / chips
    return {"step_seconds": step, "mfu": per_chip / peak / step,
            "attention_seconds": attention, "peak_flops": peak, "flops_scale": scale,
            "raw_optimal_seconds": raw, "raw_mfu": per_chip / peak / raw if raw else None,
            "extrapolated_matmul_flops": extrapolated, "loop_weighted_matmul_flops": weighted,
            "points": points}


def format_estimate(e: dict) -> str:
    return "\n".join([
        f"  estimated step time (the TPU compiler's cost model, loop-corrected; not a "
        f"measurement): {e['step_seconds']:.4g} s, MFU {e['mfu']:.3f} (splash attention at "
        f"peak: {e['attention_seconds']:.4g} s)",
        f"    uncorrected cost model: {e['raw_optimal_seconds']:.4g} s; matmul FLOPs per chip "
        f"extrapolated {e['extrapolated_matmul_flops']:.4g} vs loop-weighted "
        f"{e['loop_weighted_matmul_flops']:.4g} (time scaled by {e['flops_scale']:.3f})"])
