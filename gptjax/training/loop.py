"""The training loop: take a step, then run the hooks that are due (Levanter-style).

    hooks = [Hook(log, every=10), Hook(evaluate, every=200), Hook(save, every=500, on_stop=True)]
    state, step, stopped = run(state, step_fn, batches, hooks, start=0, total=1000)

Pretraining, fine-tuning and distillation all run through `run`; what differs is the step
function, the batches and the hooks. A hook sees `StepInfo` (the step just finished, the state,
that step's metrics still on the device) and runs after every `every`-th step, after the last
step, and, with `on_stop`, when a preemption signal asks the run to stop (then the loop ends
after it). Hooks other than the metrics logger are `pause`s: their time is not step time.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.experimental import multihost_utils

from gptjax.errors import UserError


@dataclasses.dataclass
class StepInfo:
    step: int              # finished steps
    state: Any             # the TrainState after that step
    metrics: dict          # that step's metrics (device arrays; fetching them syncs)
    last: bool             # the run's final step
    stopping: bool         # a preemption signal asked the run to stop after this step
    paused: float          # seconds spent in `pause` hooks so far


@dataclasses.dataclass
class Hook:
    fn: Callable[[StepInfo], None]
    every: int                  # after every `every`-th step (0: only after the last)
    on_last: bool = True        # also after the final step
    on_stop: bool = False       # also when stopping early (checkpoints: yes; eval: no)
    pause: bool = True          # its time is excluded from the step-time measurements

    def due(self, info: StepInfo) -> bool:
        if info.stopping:
            return self.on_stop
        return (self.every > 0 and info.step % self.every == 0) or (info.last and self.on_last)


class StopFlag:
    """SIGTERM / SIGINT -> finish the current step, run the on_stop hooks, end the loop.

    One process: a signal handler sets the flag. Several processes must all stop after the
    same step, also when only some got the signal. That is agreed at *every* step boundary by
    JAX's preemption service (`multihost_utils.reached_preemption_sync_point`), at no cost per
    step: its SIGTERM handler, installed by `jax.distributed.initialize`, tells the
    coordination service, which picks the step after the furthest one any process has reached;
    each process then only compares its step number with that one. SIGINT is handed to it as a
    SIGTERM. A second signal stops at once (KeyboardInterrupt).
    """

    def __init__(self):
        self.signum = None
        self.multi = False
        self.agreed_at = None  # time.time() when the stop was decided (every process agrees)
        self._old = {}

    def should_stop(self, step: int) -> bool:
        if self.multi:
            stop = multihost_utils.reached_preemption_sync_point(step)
            if stop and self.signum is None:
                self.signum = signal.SIGTERM
        else:
            stop = self.signum is not None
        if stop and self.agreed_at is None:
            self.agreed_at = time.time()
        return stop

    def __enter__(self):
        self.multi = jax.process_count() > 1
        if self.multi and not jax.config.jax_enable_preemption_service:
            raise UserError("jax_enable_preemption_service is off: a multi-process run agrees "
                            "on stopping (SIGTERM) through it; leave it on (JAX's default)")
        if threading.current_thread() is threading.main_thread():
            # Several processes: SIGTERM stays with JAX's handler (ours would replace it).
            for sig in (signal.SIGINT,) if self.multi else (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if self.multi:
            os.kill(os.getpid(), signal.SIGTERM)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


def run(state, step_fn, batches: Iterator, hooks: list[Hook], start: int, total: int,
        stop: StopFlag, max_inflight: int = 2):
    """Steps `start+1 .. total`; -> (state, finished step, stopped early)."""
    step, paused = start, 0.0
    inflight: collections.deque = collections.deque()
    while step < total:
        state, metrics = step_fn(state, next(batches))
        step += 1
        # Bounded run-ahead: wait for the step `max_inflight` back (the device still has the
        # newer ones queued, so it never idles) so that a signal is served within a step or two.
        inflight.append(metrics["loss"])
        if len(inflight) > max(max_inflight, 1):
            inflight.popleft().block_until_ready()
        stopping = stop.should_stop(step)
        info = StepInfo(step, state, metrics, step == total, stopping, paused)
        for hook in hooks:
            if hook.due(info):
                t0 = time.time()
                hook.fn(info)
                if hook.pause:
                    paused += time.time() - t0
                    info.paused = paused
        if stopping:
            return state, step, True
    return state, step, False
