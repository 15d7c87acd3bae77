"""The fault matrix: preemption, kill -9 (also inside an async save), NaNs, a full or unwritable
disk. Every test runs `gptjax train` in a subprocess and really signals / kills it.

Faults are injected with `python -m gptjax.faults` (= `python -m gptjax` plus the hooks named in
$GPTJAX_FAULT, see tests/faults.py) so the worst moments are hit on purpose, not by luck; the
random kills use a fixed seed so a failure reproduces. "Nothing lost" is checked strictly: a run
that was interrupted and resumed must end bit-identical (every logged loss, every array of the
final train state) to one uninterrupted reference run. All subprocesses use 1 CPU device so
their numbers are comparable.

The bad-input table (exit status 2, one line, no traceback) is in tests/test_bad_input.py.
docs/faults.md lists every fault, the behaviour and the test here that proves it.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import (
    EVERY,
    REPO,
    RUN_TIMEOUT,
    STEPS,
    assert_same_run,
    ckpt_root,
    complete_steps,
    file_has,
    output,
    read_losses,
    read_state,
    run_train,
    subprocess_env,
    tmp_dirs,
    train_cmd,
    wait_for,
)

# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One uninterrupted run: the losses and final state every fault test must reproduce."""
    workdir = tmp_path_factory.mktemp("reference")
    proc = run_train(workdir)
    assert proc.returncode == 0, output(proc)
    losses = read_losses(workdir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in losses.values())
    return {"workdir": workdir, "losses": losses, "state": read_state(workdir)}


# ----------------------------------------------------------------------------- 1. preemption


@pytest.mark.parametrize("sig,at,fault", [
    # the async save of step 4 is made slow, so it is still in flight when SIGTERM comes
    ("TERM", 6, "delay_in_save:4:2"),
    pytest.param("INT", EVERY * 2, "", marks=pytest.mark.slow, id="INT-on-a-checkpoint-step"),
])
def test_sigterm_checkpoints_exits_0_and_resume_is_bit_identical(reference, tmp_path, sig, at,
                                                                 fault):
    """SIGTERM in the middle of step 6: finish it, save step 6 (after the in-flight save of
    step 4, and waiting for both), exit 0 with a message; the same command then resumes at 6
    and ends as if never stopped."""
    w = tmp_path / "run"
    first = run_train(w, fault=",".join(filter(None, [fault, f"signal_at_batch:{at}:{sig}"])))
    assert first.returncode == 0, output(first)
    assert f"stopped by signal SIG{sig} after step {at}" in first.stdout + first.stderr, \
        output(first)
    saved = sorted(set(range(EVERY, at + 1, EVERY)) | {at})[-2:]  # keep_checkpoints=2
    assert complete_steps(w) == saved and not tmp_dirs(w), \
        "the preemption checkpoint (or the one in flight before it) is incomplete"
    assert max(read_losses(w)) == at
    second = run_train(w)
    assert second.returncode == 0, output(second)
    assert f"resumed at step {at}" in second.stdout, output(second)
    assert_same_run(w, reference)


def test_external_sigint_checkpoints_and_exits_0(tmp_path):
    """A real Ctrl-C (SIGINT from another process) while training: same graceful stop."""
    w = tmp_path / "run"
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen(train_cmd(w, steps=100_000, every=0), cwd=REPO,
                                env=subprocess_env(), stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_for(file_has(log, "step 3/"), proc, what="step 3 to be logged")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 0, text
    m = re.search(r"stopped by signal SIGINT after step (\d+)", text)
    assert m, text
    stopped = int(m.group(1))
    assert complete_steps(w) == [stopped] and not tmp_dirs(w), text
    assert read_state(w)["['step']"] == stopped


# ----------------------------------------------------------------------------- 2. kill -9


def test_kill9_inside_async_save_restores_previous_complete_checkpoint(reference, tmp_path):
    """kill -9 while the async save of step 8 has written its files but not committed them:
    the restart ignores the half-written step 8, resumes from 4 and still ends bit-identical."""
    w = tmp_path / "run"
    marker = tmp_path / "paused"
    proc = subprocess.Popen(train_cmd(w), cwd=REPO, env=subprocess_env(
        "pause_in_save:8", marker), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(marker.is_file, proc, what="the save of step 8 to pause")
        assert complete_steps(w) == [4]
        assert tmp_dirs(w), "expected the interrupted save's temporary directory"
        proc.kill()  # SIGKILL
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    second = run_train(w)
    assert second.returncode == 0, output(second)
    assert "resumed at step 4" in second.stdout, output(second)
    assert_same_run(w, reference)


def test_stale_incomplete_checkpoints_are_ignored_and_cleaned(reference, tmp_path):
    """Leftovers of crashed saves at steps this run never saves again (e.g. written with another
    ckpt_every) must not be mistaken for checkpoints, must not crash the start, and are removed."""
    w = tmp_path / "run"
    shutil.copytree(reference["workdir"], w)
    last = ckpt_root(w) / str(STEPS)
    # A crashed save of a *later* step (a previous, longer run) and of an intermediate one.
    shutil.copytree(last, ckpt_root(w) / f"{STEPS + 4}.orbax-checkpoint-tmp")
    shutil.copytree(last, ckpt_root(w) / f"{STEPS - 2}.orbax-checkpoint-tmp-1234567890")
    proc = run_train(w, steps=STEPS + 2, every=EVERY)
    assert proc.returncode == 0, output(proc)
    assert f"resumed at step {STEPS}" in proc.stdout, output(proc)
    assert complete_steps(w)[-1] == STEPS + 2
    assert not tmp_dirs(w), f"stale incomplete checkpoints not cleaned: {tmp_dirs(w)}"


KILL_KINDS = ("time", "startup", "kill_at_batch", "kill_after_save", "kill_in_save")


def _kill_once(workdir: Path, kind: str, rng: random.Random, log: Path) -> int:
    """Starts the run with one kill planned; returns its exit status (-9 if the kill landed).

    time: a random moment after the train step is compiled (steps, saves, metrics writes);
    startup: a random moment in the first seconds (imports, restore, config.json, compile);
    the others are gptjax.faults hooks at a random batch / checkpoint step."""
    if kind in ("time", "startup"):
        with open(log, "w") as f:
            proc = subprocess.Popen(train_cmd(workdir), cwd=REPO, env=subprocess_env(),
                                    stdout=f, stderr=subprocess.STDOUT)
        try:
            if kind == "time":
                wait_for(lambda: proc.poll() is not None or file_has(log, "compiled")(), proc,
                         what="compilation")
                time.sleep(rng.uniform(0.0, 0.15))
            else:
                time.sleep(rng.uniform(0.5, 4.0))
            proc.kill()
            return proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    if kind == "kill_at_batch":
        fault = f"kill_at_batch:{rng.randint(1, STEPS)}"
    else:  # kill_after_save (background write running) / kill_in_save (before its commit)
        fault = f"{kind}:{rng.choice(range(EVERY, STEPS + 1, EVERY))}"
    proc = run_train(workdir, fault=fault)
    log.write_text(f"GPTJAX_FAULT={fault}\n" + output(proc))
    return proc.returncode


def _kill_matrix(reference, tmp_path, kills: int, seed: int) -> dict:
    """Kills runs at `kills` seeded random points (chains of kill, restart, kill, ..., finish)
    and checks every finished chain against the uninterrupted run. -> kills landed per kind."""
    rng = random.Random(seed)
    landed = {k: 0 for k in KILL_KINDS}
    chain, attempts = 0, 0
    while sum(landed.values()) < kills:
        w = tmp_path / f"chain{chain}"
        finished = False
        while not finished and sum(landed.values()) < kills:
            attempts += 1
            assert attempts < 4 * kills + 8, f"too few kills landed: {landed}"
            # the first kill is always a pure random-time one; then any kind
            kind = "time" if not landed["time"] else rng.choice(KILL_KINDS)
            log = tmp_path / f"kill{attempts}-{kind}.log"
            rc = _kill_once(w, kind, rng, log)
            if rc == -signal.SIGKILL:
                landed[kind] += 1
                # whatever is on disk now must never pass for a checkpoint unless complete
                for s in complete_steps(w):
                    assert (ckpt_root(w) / str(s) / "state").is_dir(), (s, log.read_text())
            else:
                assert rc == 0, log.read_text()
                finished = complete_steps(w)[-1:] == [STEPS]
        last = run_train(w)  # the same command once more, undisturbed
        assert last.returncode == 0, output(last)
        assert_same_run(w, reference)
        chain += 1
    print(f"kills landed per kind: {landed} in {attempts} runs, {chain} chain(s)")
    return landed


@pytest.mark.slow  # three killed trainings; fixed kill points stay default
def test_kill9_at_random_points_three_times(reference, tmp_path):
    _kill_matrix(reference, tmp_path, kills=3, seed=1234)


@pytest.mark.slow
def test_kill9_at_random_points_twenty_times(reference, tmp_path):
    landed = _kill_matrix(reference, tmp_path, kills=20, seed=20261123)
    assert all(landed.values()), f"some kind of kill never landed: {landed}"


# ----------------------------------------------------------------------------- 3. NaN / Inf


def test_nan_gradients_skip_the_update_counted_and_logged(tmp_path):
    w = tmp_path / "run"
    proc = run_train(w, fault="nan_at_batch:6", extra=["--config.train.nonfinite=skip"])
    assert proc.returncode == 0, output(proc)
    text = proc.stdout + proc.stderr
    assert re.search(r"\b6\b.*(non-finite|NaN).*skipped|skipped.*\b6\b", text), output(proc)
    records = [json.loads(line) for line in open(w / "metrics.jsonl")]
    at6 = [r for r in records if r["step"] == 6 and r["split"] == "train"]
    assert at6 and at6[0].get("skipped_steps") == 1, at6
    for s in complete_steps(w):
        state = read_state(w, s)
        assert all(np.isfinite(v).all() for k, v in state.items()
                   if np.issubdtype(v.dtype, np.floating)), f"non-finite values in checkpoint {s}"
        assert state["['skipped']"] == (1 if s >= 6 else 0)
    # Skipping step 6 left the params of step 5 in place: step 6 changed nothing.
    assert complete_steps(w)[-1] == STEPS


def test_nan_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    """nonfinite=stop: exit 2 with one line naming step 6; checkpoint 4 (whose async save is
    made slow on purpose, so it is still in flight) is complete, finite and resumable."""
    w = tmp_path / "run"
    proc = run_train(w, fault="delay_in_save:4:3,nan_at_batch:6",
                     extra=["--config.train.nonfinite=stop"])
    assert proc.returncode == 2, output(proc)
    assert "Traceback" not in proc.stderr, output(proc)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gptjax: error:") and "step 6" in last, output(proc)
    assert complete_steps(w) == [4], output(proc)
    state = read_state(w, 4)
    assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")


# ----------------------------------------------------------------------------- 4. storage


def _assert_clear_storage_error(proc, step_kept: int, workdir: Path, *words: str) -> None:
    """Exit status 2 with one `gptjax: error:` line that names the problem, no uncaught
    exception, and the newest complete checkpoint is still `step_kept` and restores.

    Orbax (and asyncio, at exit) may also log the failed background writes with their
    tracebacks around that line: they are third-party logs, not an uncaught exception."""
    assert proc.returncode == 2, output(proc)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("gptjax: error:")]
    assert len(errors) == 1, output(proc)
    for word in words:
        assert word in errors[0], f"{word!r} missing from: {errors[0]}"
    # Frames of the package's own source (not of a checkout's .venv, whatever its name).
    package = re.escape(str(REPO / "gptjax") + "/")
    own_frames = [ln for ln in proc.stderr.splitlines() if re.search(f'File "{package}', ln)]
    assert not own_frames, output(proc)
    assert complete_steps(workdir)[-1] == step_kept, output(proc)
    read_state(workdir, step_kept)  # the last good checkpoint still restores


@pytest.mark.parametrize("fault", [
    "enospc_in_save:8",
    pytest.param("enospc_at_save:8", marks=pytest.mark.slow),
])
def test_disk_full_at_save_is_a_clear_error_and_keeps_last_checkpoint(tmp_path, fault):
    """ENOSPC in the background write (surfacing when the save is awaited) or when a save
    starts: one `gptjax: error:` line naming the disk problem; checkpoint 4 stays intact.
    (test_real_full_disk_on_tmpfs then frees the space and resumes.)"""
    w = tmp_path / "run"
    proc = run_train(w, fault=fault)
    _assert_clear_storage_error(proc, 4, w, "No space left on device", "checkpoint",
                                "step 4")


def test_unwritable_checkpoint_dir_is_a_clear_error(tmp_path):
    w = tmp_path / "run"
    proc = run_train(w, fault="eacces_at_save:8")
    _assert_clear_storage_error(proc, 4, w, "Permission denied", "checkpoint", "step 4")


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def test_real_full_disk_on_tmpfs(reference, tmp_path):
    """A genuinely full filesystem (a small tmpfs; needs root, skipped where mount is refused):
    a workdir whose newest checkpoint is 8 on a disk with ~48 KiB left; resuming, the save of
    step 12 fails with a clear error and checkpoint 8 survives; free the space, rerun the same
    command and it ends bit-identical to the uninterrupted run."""
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, "8m"):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        w = mnt / "run"
        shutil.copytree(reference["workdir"], w)
        for s in complete_steps(w):
            if s > 8:
                shutil.rmtree(ckpt_root(w) / str(s))
        filler = mnt / "filler"
        with open(filler, "wb") as f:  # leave ~48 KiB: metrics fit, a checkpoint does not
            free = shutil.disk_usage(mnt).free
            f.write(b"\0" * max(free - 48 * 1024, 0))
        proc = run_train(w)
        _assert_clear_storage_error(proc, 8, w, "No space left on device", "checkpoint",
                                    "step 8")
        filler.unlink()
        again = run_train(w)
        assert again.returncode == 0, output(again)
        assert_same_run(w, reference)
    finally:
        _umount(mnt)


def test_read_only_workdir_is_a_clear_error(reference, tmp_path):
    """The workdir's filesystem turned read-only (remounted; needs root, skipped where mount is
    refused): resuming fails at once with one line, the checkpoints stay as they were."""
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, "8m"):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        w = mnt / "run"
        shutil.copytree(reference["workdir"], w)
        r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
        if r.returncode:
            pytest.skip("cannot remount the tmpfs read-only")
        proc = run_train(w, steps=STEPS + 4)
        _assert_clear_storage_error(proc, STEPS, w, "Read-only file system")
    finally:
        _umount(mnt)


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_tiny_shakespeare_preempt_and_kill_resume_bit_identical(tmp_path, shakespeare_manual_dir):
    """The same guarantees on real text (char tokenizer, TFDS tiny_shakespeare, the real input
    pipeline's saved position): SIGTERM at step 6, then kill -9 inside the save of step 8,
    then finish -- bit-identical to an uninterrupted run."""
    data = ["--config.data.source=tfds", f"--config.data.manual_dir={shakespeare_manual_dir}",
            f"--config.data.data_dir={tmp_path / 'tfds'}",
            f"--config.data.cache_dir={tmp_path / 'cache'}"]

    def run(w, fault=None):
        return subprocess.run(train_cmd(w, extra=data), cwd=REPO, env=subprocess_env(
            fault, extra={"GPTJAX_OFFLINE": "1"}), capture_output=True, text=True,
            timeout=RUN_TIMEOUT)

    ref_w = tmp_path / "reference"
    ref = run(ref_w)
    assert ref.returncode == 0, output(ref)
    reference = {"losses": read_losses(ref_w), "state": read_state(ref_w)}
    w = tmp_path / "run"
    first = run(w, "signal_at_batch:6:TERM")
    assert first.returncode == 0 and "stopped by signal SIGTERM after step 6" in first.stdout, \
        output(first)
    second = run(w, "kill_in_save:8")
    assert second.returncode == -signal.SIGKILL, output(second)
    assert "resumed at step 6" in second.stdout, output(second)
    third = run(w)
    assert third.returncode == 0 and "resumed at step 6" in third.stdout, output(third)
    assert_same_run(w, reference)
