"""The loss curves of a run: train (and eval) loss against step from WORKDIR/metrics.jsonl, drawn
to loss.png (`gptjax plot`, and `gptjax train` at the end of a run with train.plot on)."""

from __future__ import annotations

from gptjax.errors import UserError
from gptjax.metrics import plotting
from gptjax.metrics.writer import read_jsonl
from gptjax.storage import paths


def plot(workdir: str, out: str | None = None) -> str:
    """Train (and eval) loss against step -> WORKDIR/loss.png (or `out`); the path written."""
    path = paths.join(workdir, "metrics.jsonl")
    if not paths.isfile(path):
        raise UserError(f"{path} not found: is {workdir} a gptjax workdir with a trained run?")
    series: dict[str, dict[int, float]] = {}
    for r in read_jsonl(path):
        if isinstance(r.get("loss"), (int, float)):
            series.setdefault(r.get("split", "train"), {})[r["step"]] = r["loss"]
    fig, ax = plotting.pyplot().subplots(figsize=(7, 4.5))
    for split, points in sorted(series.items()):
        steps = sorted(points)
        ax.plot(steps, [points[s] for s in steps], label=f"{split} loss",
                marker="o" if split != "train" else None, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(paths.name(paths.resolve(workdir)))
    ax.grid(alpha=0.3)
    ax.legend()
    return plotting.save(fig, out or paths.join(workdir, "loss.png"))
