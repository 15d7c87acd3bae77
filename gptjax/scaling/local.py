"""A sweep's runs as local subprocesses, `sweep.workers` at a time (`sweep.isolate`, workers > 1).

Each run is `gptjax sweep --workdir W --run NAME` (output to W/runs/NAME/train.log when several
run at once). The first run goes alone, so that it alone tokenizes the corpus into the shared
cache. SIGTERM or SIGINT to the sweep is passed on to every running run, which saves its
checkpoint and exits as `gptjax train` does; runs not started yet are not started. The runs
get a session of their own, so a Ctrl-C in the terminal reaches them once, through the sweep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable


def command(workdir: str, name: str) -> list[str]:
    return [sys.executable, "-m", "gptjax", "sweep", "--workdir", workdir, "--run", name]


class Runner:
    """Launches runs, remembers the live ones, and stops them all on a signal."""

    def __init__(self, workdir: str, quiet: bool, result: Callable, log=print):
        self.workdir, self.quiet, self.result, self.log = workdir, quiet, result, log
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def launch(self, run: dict) -> bool:
        """One run; -> whether it finished (False if it failed, was stopped or never began)."""
        with self.lock:
            if self.stopped.is_set():
                return False
            self.log(f"sweep: launching {run['name']} in a subprocess")
            out = None
            if self.quiet:
                os.makedirs(run["workdir"], exist_ok=True)
                out = open(os.path.join(run["workdir"], "train.log"), "a")  # noqa: SIM115
            proc = subprocess.Popen(command(self.workdir, run["name"]), stdout=out,
                                    stderr=subprocess.STDOUT if out else None,
                                    start_new_session=True)
            self.live.add(proc)
        try:
            code = proc.wait()
        finally:
            with self.lock:
                self.live.discard(proc)
            if out is not None:
                out.close()
        done = self.result(run["workdir"])
        if self.quiet:
            self.log(f"sweep: {run['name']} " + (
                f"finished, eval loss {done['eval_loss']:.4f}" if done
                else "did not finish (see its train.log)"))
        return code == 0 and done is not None

    def stop(self, signum, frame=None) -> None:
        """The signal handler: no new runs; the running ones get the same signal."""
        self.stopped.set()
        for proc in list(self.live):
            proc.send_signal(signum)


def run_parallel(workdir: str, runs: list[dict], workers: int, result: Callable,
                 log=print) -> tuple[list[str], bool]:
    """Every run without a result, `workers` at a time; -> (names of the runs that failed,
    whether a signal stopped the sweep)."""
    todo = [r for r in runs if result(r["workdir"]) is None]
    runner = Runner(workdir, workers > 1, result, log)
    handlers = {s: signal.signal(s, runner.stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        ok = [runner.launch(r) for r in todo[:1]]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            ok += list(pool.map(runner.launch, todo[1:]))
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    failed = [r["name"] for r, good in zip(todo, ok, strict=True) if not good]
    return ([] if runner.stopped.is_set() else failed), runner.stopped.is_set()
