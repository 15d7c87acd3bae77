"""The one matplotlib helper: every figure gptjax draws (loss curves, sweep plots, the muP
coordinate check, in-context accuracy, the compression report) gets pyplot from here, on the
Agg backend (files only, no display), and saves through here.

matplotlib is imported at the first figure, not with this module: commands that draw nothing
(`gptjax compress --help`, a training run with train.plot off) never load it.
"""

from __future__ import annotations

import functools
import io
import os

import numpy as np

from gptjax.storage import paths


@functools.cache
def pyplot():
    """matplotlib.pyplot on the Agg backend (set once, at the first call)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def colors(n: int, cmap: str = "viridis") -> list:
    """`n` colors spread over `cmap` (its last tenth left out: too pale on white)."""
    return [pyplot().get_cmap(cmap)(v) for v in np.linspace(0, 0.9, max(n, 1))]


def finish_axes(ax, xlabel: str, ylabel: str, title: str, logx: bool = False,
                logy: bool = False, xticks=None) -> None:
    """Labels, title, log scales, a light grid and (if anything is labelled) a small legend.
    Explicit `xticks` are labelled as numbers; the minor labels of a log x-axis are dropped."""
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(pyplot().NullFormatter())
    if xticks is not None:
        ax.set_xticks(xticks, [f"{v:g}" for v in xticks])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def finish(fig, ax, path: str, xlabel: str, ylabel: str, title: str, logy: bool = False,
           xticks=None) -> str:
    """A one-axes figure over a log x-axis (compute, parameters, learning rate), saved."""
    finish_axes(ax, xlabel, ylabel, title, logx=True, logy=logy, xticks=xticks)
    return save(fig, path)


def save(fig, path: str, dpi: float | str = 100) -> str:
    """Lays the figure out tightly, writes it to `path` (a local file or a gs:// URL, written
    whole: readers never see part of it; the format is the path's extension) and closes it."""
    fig.tight_layout()
    data = io.BytesIO()
    fig.savefig(data, format=os.path.splitext(str(path))[1][1:].lower() or "png", dpi=dpi)
    pyplot().close(fig)
    paths.write_bytes(path, data.getvalue())
    return path
