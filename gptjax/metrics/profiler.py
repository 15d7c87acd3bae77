"""`train.profile_steps=START:COUNT`: a `jax.profiler` trace of steps START+1 .. START+COUNT in
WORKDIR/profile/ (a gs:// workdir too), on process 0 only.

The trace is TensorBoard's profile-plugin layout (`profile/plugins/profile/RUN/HOST.xplane.pb`):
open it with XProf / TensorBoard's profile tab, or `.trace.json.gz` in Perfetto.
"""

from __future__ import annotations

import jax

from gptjax.errors import UserError
from gptjax.storage import paths


def parse_steps(spec: str) -> tuple[int, int] | None:
    """'START:COUNT' -> (START, COUNT); '' -> None."""
    if not spec:
        return None
    try:
        start, count = (int(x) for x in str(spec).split(":"))
    except ValueError:
        start, count = -1, 0
    if start < 0 or count < 1:
        raise UserError(f"config.train.profile_steps={spec!r}: write START:COUNT, e.g. 10:5 "
                        f"(trace steps 11-15), START >= 0 and COUNT >= 1")
    return start, count


class Profiler:
    """A loop hook (every step): starts the trace after step START, stops it after
    START+COUNT (waiting for that step's metrics, so the trace holds its device work)."""

    def __init__(self, workdir: str, spec: str, start_step: int, enabled: bool = True):
        self.window = parse_steps(spec) if enabled else None
        self.dir = paths.join(workdir, "profile")
        self.active = False
        if self.window is not None and self.window[0] == start_step:
            self._start()

    def _start(self) -> None:
        jax.profiler.start_trace(self.dir)
        self.active = True

    def __call__(self, info) -> None:
        if self.window is None:
            return
        start, count = self.window
        if info.step == start and not self.active:
            self._start()
        elif self.active and (info.step >= start + count or info.last or info.stopping):
            jax.block_until_ready(info.metrics)
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
