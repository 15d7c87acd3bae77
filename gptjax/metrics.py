"""Training metrics: `metrics.jsonl`, TensorBoard events, a terminal progress bar, loss.png,
and the peak-FLOP/s table behind MFU.

MFU = achieved model FLOP/s per device / the device's peak dense bf16 FLOP/s, where achieved
FLOP/s = tokens/s x FLOPs per token (`gptjax info`: 6N + 12LHQT) / number of devices. Devices
missing from PEAK_BF16_FLOPS (CPUs included) get no MFU rather than a made-up one.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time

from gptjax import paths

# Dense bf16 peak FLOP/s per device (vendor datasheets, no sparsity), matched against
# `jax.devices()[0].device_kind` lower-cased; first match wins, so specific names come first.
PEAK_BF16_FLOPS = (
    ("h100 pcie", 756e12),
    ("h100", 989e12),          # SXM / HBM3
    ("h200", 989e12),
    ("gh200", 989e12),
    ("a100", 312e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),   # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),        # v5p reports itself as "TPU v5"
    ("tpu v6 lite", 918e12),   # v6e (Trillium)
    ("tpu v6e", 918e12),
    ("tpu7x", 2307e12),
)


def peak_flops(device_kind: str) -> float | None:
    kind = device_kind.lower()
    for name, flops in PEAK_BF16_FLOPS:
        if name in kind:
            return flops
    return None


def throughput(tokens_per_s: float, flops_per_token: float, num_devices: int,
               device_kind: str) -> dict:
    """tokens/s -> {'tflops_per_device', 'mfu'} ('mfu' only for devices in the peak table)."""
    per_device = tokens_per_s * flops_per_token / max(num_devices, 1)
    out = {"tflops_per_device": per_device / 1e12}
    peak = peak_flops(device_kind)
    if peak:
        out["mfu"] = 100.0 * per_device / peak
    return out


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class MetricsWriter:
    """Writes one JSON line per record, TensorBoard scalars and a progress bar (on a terminal).

    Only the primary process writes (enabled=False elsewhere). On resume, records after the
    resumed step (from the interrupted run) are dropped so the curves have no duplicates.
    """

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0,
                 enabled: bool = True, tensorboard: bool = True, progress: bool | None = None):
        self.enabled = enabled
        self.path = paths.join(workdir, "metrics.jsonl")
        self.tb = None
        self.bar = None
        if not enabled:
            return
        # On a bucket (no append): written locally, uploaded every 10 s, by flush() and close().
        self.staged = paths.Staged(workdir)
        self.staged.fetch("metrics.jsonl")
        local = self.staged.path("metrics.jsonl")
        _truncate_after(local, start_step)
        self.file = open(local, "a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(self.staged.path("tb"), flush_secs=30)
            except ImportError:  # optional: jsonl and loss.png still work
                self.tb = None
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step",
                            dynamic_ncols=True, leave=True)

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update({k: _plain(v) for k, v in metrics.items()})
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "split", "time") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{split}/{k}", v, int(step))
        self.staged.sync(force=False)

    def flush(self) -> None:
        """Makes every record so far durable in the workdir (uploaded, on a bucket): called
        before a checkpoint, so a run resumed from it finds all of its steps' records."""
        if not self.enabled:
            return
        if self.tb is not None:
            self.tb.flush()
        self.staged.sync()

    def progress(self, step: int, postfix: str = "") -> None:
        if self.bar is not None:
            self.bar.n = int(step)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.refresh()

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            try:
                self.tb.flush()
                self.tb.close()
            except OSError:  # reliability (tests/test_faults.py): on a full disk the events
                # are lost anyway; don't bury the real error under TensorBoard's traceback,
                # nor let its atexit hook retry the flush.
                for fw in (getattr(self.tb, "all_writers", None) or {}).values():
                    events = getattr(fw, "event_writer", None)
                    if events is not None and hasattr(events, "_closed"):
                        events._closed = True
        self.file.close()
        self.staged.close()


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf
    return v


def _truncate_after(path: str, step: int) -> None:
    if not os.path.isfile(path):
        return
    keep = [line for line in read_jsonl(path, raw=True) if json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(keep)


def read_jsonl(path: str, raw: bool = False) -> list:
    out = []
    with paths.open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
            out.append(line + "\n" if raw else record)
    return out


def plot(workdir: str, out: str | None = None) -> str:
    """Train (and eval) loss against step -> WORKDIR/loss.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = paths.join(workdir, "metrics.jsonl")
    if not paths.isfile(path):
        from gptjax.errors import UserError
        raise UserError(f"{path} not found: is {workdir} a gptjax workdir with a trained run?")
    series: dict[str, dict[int, float]] = {}
    for r in read_jsonl(path):
        if isinstance(r.get("loss"), (int, float)):
            series.setdefault(r.get("split", "train"), {})[r["step"]] = r["loss"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for split, points in sorted(series.items()):
        steps = sorted(points)
        ax.plot(steps, [points[s] for s in steps], label=f"{split} loss",
                marker="o" if split != "train" else None, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(paths.name(paths.resolve(workdir)))
    ax.grid(alpha=0.3)
    ax.legend()
    out = out or paths.join(workdir, "loss.png")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    paths.write_bytes(out, png.getvalue())
    return out


# ----------------------------------------------------------------------------- CLI: gptjax plot


def add_args(parser):
    parser.add_argument("workdir", nargs="?", help="a training workdir (holds metrics.jsonl)")
    parser.add_argument("--workdir", dest="workdir_flag", metavar="DIR", help=argparse_hidden())
    parser.add_argument("--out", help="output PNG (default WORKDIR/loss.png)")


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


def run(args):
    from gptjax.errors import UserError
    workdir = args.workdir or args.workdir_flag
    if not workdir:
        raise UserError("gptjax plot WORKDIR: give the training workdir")
    print(plot(workdir, args.out))
