"""Fault injection for the reliability tests: crash, stall or fill the disk at exact points.

Real faults (a preemption, `kill -9`, a full disk) land at random moments; to test that no
moment loses a checkpoint, the tests also need to hit the worst ones on purpose. This module
does that without touching the training code: `python tests/faults.py ARGS...` is exactly
`python -m gptjax ARGS...` with the faults in $GPTJAX_FAULT installed first (comma-separated):

    pause_in_save:S     the async save of step S has written everything into its temporary
                        directory; block just before the commit (a rename, or on gs:// the
                        `commit_success.txt` object) that completes it,
                        touch $GPTJAX_FAULT_MARKER (if set) and wait there to be killed
    kill_in_save:S      the same point, but SIGKILL ourselves there
    kill_after_save:S   SIGKILL ourselves as soon as the save of step S has been *started*
                        (the background thread is still writing the arrays)
    delay_in_save:S:SEC the same point, but sleep SEC seconds there (a slow filesystem), so the
                        save of step S is still in flight whatever the loop does next
    enospc_in_save:S    the async save of step S fails with ENOSPC in the background thread
    enospc_at_save:S    starting the save of step S fails with ENOSPC (synchronously)
    eacces_at_save:S    starting the save of step S fails with EACCES (unwritable workdir)
    signal_at_batch:N[:SIG]  send ourselves SIGTERM (or SIGINT, ...) when this process draws
                        its N-th training batch (1-based), i.e. during step start+N
    kill_at_batch:N     SIGKILL ourselves when this process draws its N-th training batch
    nan_at_batch:N      the gradients of the step that trains on the N-th batch are NaN

S may be `*` (every step). With $GPTJAX_FAULT_PROCESS=I only JAX process I (of a multi-process
run, $JAX_PROCESS_ID) installs the faults: one host of two crashes.
The hooks wrap `os.rename` (Orbax's local-filesystem commit) and
`CommitFileTemporaryPath.finalize` (its gs:// commit),
`orbax.checkpoint.CheckpointManager.save`, `gptjax.data.make_train_iter` and
`gptjax.training.steps.make_loss_and_grads`. In-process tests call `install(spec)` (and undo it with
pytest's monkeypatch: `install(spec, monkeypatch.setattr)`).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import time

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint._src.path import atomicity  # the gs:// commit; no public name

import gptjax.data as data
from gptjax.cli import main as cli_main
from gptjax.training import steps

ENV = "GPTJAX_FAULT"
MARKER_ENV = "GPTJAX_FAULT_MARKER"
COMMIT_KINDS = ("pause_in_save", "kill_in_save", "delay_in_save", "enospc_in_save")
SAVE_KINDS = ("kill_after_save", "enospc_at_save", "eacces_at_save")
BATCH_KINDS = ("signal_at_batch", "kill_at_batch", "nan_at_batch")
KINDS = COMMIT_KINDS + SAVE_KINDS + BATCH_KINDS
_TMP_RE = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


def parse(spec: str) -> list[tuple[str, list[str]]]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, *args = item.split(":")
        if kind not in KINDS:
            raise ValueError(f"{ENV}: unknown fault {kind!r}; choose from {', '.join(KINDS)}")
        if not args:
            raise ValueError(f"{ENV}: {kind} needs an argument, e.g. {kind}:10")
        out.append((kind, args))
    return out


def _say(text: str) -> None:
    print(f"gptjax-fault: {text}", file=sys.stderr, flush=True)


def _touch_marker(text: str) -> None:
    path = os.environ.get(MARKER_ENV)
    if path:
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


def _kill_self() -> None:
    sys.stderr.flush()
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached


def _matches(arg: str, step: int) -> bool:
    return arg == "*" or int(arg) == int(step)


def _enospc(step) -> OSError:
    return OSError(errno.ENOSPC, f"No space left on device (injected at step {step})")


def _commit_fault(commit, step: int, where: str) -> None:
    """The commit faults due at the last moment of the save of `step`."""
    for kind, a in commit:
        if not _matches(a[0], step):
            continue
        if kind == "pause_in_save":
            _say(f"paused in the save of step {step} before its commit; kill me")
            _touch_marker(f"{step} {where}")
            while True:
                time.sleep(1)
        if kind == "delay_in_save":
            _say(f"delaying the commit of step {step} by {a[1]}s")
            time.sleep(float(a[1]))
        if kind == "kill_in_save":
            _say(f"SIGKILL in the save of step {step} before its commit")
            _kill_self()
        if kind == "enospc_in_save":
            _say(f"ENOSPC in the save of step {step}")
            raise _enospc(step)


def _install_commit_hook(faults) -> None:
    """The last moment of an async save, once every file is written: on a local disk Orbax
    renames `S.orbax-checkpoint-tmp*` to `S` (os.rename is wrapped); on gs:// (no rename) it
    writes `S/commit_success.txt` (CommitFileTemporaryPath.finalize is wrapped)."""
    commit = [(k, a) for k, a in faults if k in COMMIT_KINDS]
    if not commit:
        return
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        m = _TMP_RE.match(os.path.basename(os.fspath(src)))
        if m:
            _commit_fault(commit, int(m.group(1)), os.fspath(src))
        return real_rename(src, dst, *args, **kwargs)

    os.rename = rename
    commit_file = atomicity.CommitFileTemporaryPath
    real_finalize = commit_file.finalize

    async def finalize(self, *args, **kwargs):
        final = self.get_final()
        if final.name.isdigit():  # the step directory (its items are committed the same way)
            _commit_fault(commit, int(final.name), os.fspath(final))
        return await real_finalize(self, *args, **kwargs)

    commit_file.finalize = finalize


def _install_save_hook(faults) -> None:
    """Wraps Orbax's CheckpointManager.save, so the error comes from where Orbax would raise it
    (e.g. creating the checkpoint's directory) and gptjax's own handling of it is exercised."""
    hooks = [(k, a) for k, a in faults if k in SAVE_KINDS]
    if not hooks:
        return
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        for kind, a in hooks:
            if not _matches(a[0], step):
                continue
            if kind == "enospc_at_save":
                _say(f"ENOSPC when starting the save of step {step}")
                raise _enospc(step)
            if kind == "eacces_at_save":
                _say(f"EACCES when starting the save of step {step}")
                raise PermissionError(errno.EACCES, "Permission denied (injected)",
                                      os.fspath(self.directory))
        out = real_save(self, step, *args, **kwargs)
        for kind, a in hooks:
            if kind == "kill_after_save" and _matches(a[0], step):
                _say(f"SIGKILL right after starting the save of step {step}")
                _kill_self()
        return out

    ocp.CheckpointManager.save = save


class _CountingIter:
    """Forwards to the real train iterator; fires a fault when the N-th batch is drawn."""

    def __init__(self, inner, hooks):
        self._inner = inner
        self._hooks = hooks
        self._drawn = 0

    def __iter__(self):
        return self

    def __next__(self):
        self._drawn += 1
        for kind, a in self._hooks:
            if int(a[0]) != self._drawn:
                continue
            if kind == "nan_at_batch":  # marked with an id no tokenizer makes; see below
                batch = next(self._inner)
                batch["inputs"] = batch["inputs"].copy()
                batch["inputs"][0, 0] = -1
                return batch
            if kind == "kill_at_batch":
                _say(f"SIGKILL at training batch {self._drawn}")
                _kill_self()
            sig = getattr(signal, "SIG" + (a[1] if len(a) > 1 else "TERM").upper())
            _say(f"sending {sig.name} at training batch {self._drawn}")
            os.kill(os.getpid(), sig)
        return next(self._inner)

    def __getattr__(self, name):  # get_state, set_state, close, ...
        return getattr(self._inner, name)


def _install_batch_hook(faults, setattr_) -> None:
    hooks = [(k, a) for k, a in faults if k in BATCH_KINDS]
    if not hooks:
        return
    real = data.make_train_iter
    setattr_(data, "make_train_iter", lambda *a, **k: _CountingIter(real(*a, **k), hooks))
    if any(k == "nan_at_batch" for k, _ in hooks):
        real_lg = steps.make_loss_and_grads

        def make_loss_and_grads(*args, **kwargs):
            inner = real_lg(*args, **kwargs)

            def loss_and_grads(params, batch, key):
                loss, grads = inner(params, batch, key)
                marked = jnp.min(batch["inputs"]) < 0
                return loss, jax.tree.map(lambda g: jnp.where(marked, jnp.nan, g), grads)
            return loss_and_grads
        setattr_(steps, "make_loss_and_grads", make_loss_and_grads)


def install(spec: str | None = None, setattr_=setattr) -> list:
    """Installs the faults of `spec` (default: $GPTJAX_FAULT) into this process."""
    spec = os.environ.get(ENV, "") if spec is None else spec
    only = os.environ.get("GPTJAX_FAULT_PROCESS")
    if only is not None and os.environ.get("JAX_PROCESS_ID", "0") != only:
        spec = ""
    faults = parse(spec)
    _install_commit_hook(faults)
    _install_save_hook(faults)
    _install_batch_hook(faults, setattr_)
    return faults


def main(argv: list[str] | None = None) -> int:
    try:
        install()
    except ValueError as e:
        print(f"gptjax: error: {e}", file=sys.stderr)
        return 2
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
