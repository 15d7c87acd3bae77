"""Training metrics: `metrics.jsonl`, TensorBoard events, a terminal progress bar, and the same
scalars to any further sinks (W&B: gptjax/metrics/wandb_sink.py).

The loss curves drawn from metrics.jsonl are gptjax/metrics/curves.py; the peak FLOP/s behind
MFU are in gptjax/hardware/devices.py.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from gptjax.storage import paths


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
                 enabled: bool = True, tensorboard: bool = True, progress: bool | None = None,
                 sinks: tuple = ()):
        self.enabled = enabled
        self.sinks = list(sinks)  # objects with write(step, scalars) and close()
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
        scalars = {f"{split}/{k}": v for k, v in record.items()
                   if k not in ("step", "split", "time") and isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, int(step))
        for sink in self.sinks:
            sink.write(step, scalars)
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
        for sink in self.sinks:
            sink.close()
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
