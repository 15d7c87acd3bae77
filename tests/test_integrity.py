"""Integrity: corrupted checkpoints, tokenizer and config are detected and named in one line;
training falls back to the newest intact checkpoint and ends bit-identical to an uninterrupted
run (the fault matrix of tests/test_faults.py, extended; docs/faults.md, "Integrity").

The checkpoint cases run in-process on a small saved state (a compressed and an uncompressed
array chunk, a truncated or deleted file, corrupted metadata); the training cases run `gptjax
train` in a subprocess on the tiny config, as the kill -9 tests do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fault_helpers import (
    REPO,
    STEPS,
    assert_same_run,
    ckpt_root,
    complete_steps,
    output,
    read_losses,
    read_state,
    run_train,
    subprocess_env,
)

from gptjax.cli import main
from gptjax.config.loader import get_config
from gptjax.data.tokenizer import CHAR_FILE, CharTokenizer, load_tokenizer
from gptjax.errors import UserError
from gptjax.parallel import sharding
from gptjax.parallel.params import with_shardings
from gptjax.storage import checkpoint, integrity
from gptjax.storage.integrity import IntegrityError
from gptjax.training.state import abstract_train_state
from gptjax.workdir import read_config, save_tokenizer, write_config

# ----------------------------------------------------------------------------- manifests


def test_manifest_names_a_changed_truncated_or_missing_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(os.urandom(3000))
    (tmp_path / "sub" / "b.txt").write_text("hello")
    manifest = integrity.write_manifest(tmp_path)
    assert sorted(manifest["files"]) == ["a.bin", "sub/b.txt"]
    assert manifest["files"]["sub/b.txt"] == {"size": 5, "crc32c": integrity.checksum(b"hello")}
    assert integrity.verify(tmp_path, "dir") == 2
    data = bytearray((tmp_path / "a.bin").read_bytes())
    data[1500] ^= 0x01                               # one bit
    (tmp_path / "a.bin").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"^dir is corrupt: a\.bin has checksum crc32c:"):
        integrity.verify(tmp_path, "dir")
    (tmp_path / "a.bin").write_bytes(bytes(data[:1000]))
    with pytest.raises(IntegrityError, match="a.bin has 1000 bytes, its manifest says 3000"):
        integrity.verify(tmp_path, "dir")
    assert integrity.verify(tmp_path, "dir", names=["sub/b.txt"]) == 1   # only those
    (tmp_path / "sub" / "b.txt").unlink()
    with pytest.raises(IntegrityError, match="sub/b.txt is missing"):
        integrity.verify(tmp_path, "dir", names=["sub/b.txt"])
    (tmp_path / integrity.MANIFEST).write_text("{not json")
    with pytest.raises(IntegrityError, match="gptjax_manifest.json is unreadable"):
        integrity.verify(tmp_path, "dir")
    (tmp_path / integrity.MANIFEST).unlink()
    assert integrity.verify(tmp_path, "dir") is None   # written before manifests: no verdict


# ----------------------------------------------------------------------------- checkpoints


def _save(workdir: Path, state: dict, steps=(1,)) -> None:
    ckpt = checkpoint.Checkpointer(str(workdir), async_save=False, keep=0)
    for step in steps:
        ckpt.save(step, state, {"position": step}, {"model": {}})
    ckpt.close()


def _restore(workdir: Path, state: dict, step: int = 1) -> dict:
    ckpt = checkpoint.Checkpointer(str(workdir), read_only=True)
    target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
              for k, v in state.items()}
    try:
        return ckpt.restore(step, target, with_data=False)[0]
    finally:
        ckpt.close()


def _verify(workdir: Path, step: int = 1) -> str:
    ckpt = checkpoint.Checkpointer(str(workdir), read_only=True)
    try:
        return ckpt.verify(step)
    finally:
        ckpt.close()


def _data_file(step_dir: Path) -> Path:
    """The array data file (OCDBT) of a checkpoint: its largest file."""
    return max((step_dir / "state").glob("ocdbt.process_*/d/*"), key=os.path.getsize)


def _rand(kind: str = "") -> dict:
    """Floats (zstd compresses them a little) and, but for kind=compressed, random integers
    (incompressible: zstd stores them as they are)."""
    rng = np.random.default_rng(0)
    state = {"w": jnp.asarray(rng.standard_normal(4096).astype(np.float32))}
    if not kind.startswith("compressed"):
        state["raw"] = jnp.asarray(rng.integers(0, 2**32, 4096, dtype=np.uint32))
    return state


def _zero_middle(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(n)
    path.write_bytes(bytes(data))


def _flip_in(path: Path, needle: bytes) -> None:
    """Flips one bit inside `needle`, which must lie in `path` uncompressed."""
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0, f"{needle[:8]!r}... is not stored uncompressed in {path}"
    data[at + len(needle) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _corrupt(step_dir: Path, kind: str, state: dict) -> str:
    """Damages checkpoint `step_dir`; -> the file (relative) that is damaged."""
    data = _data_file(step_dir)
    rel = data.relative_to(step_dir).as_posix()
    if kind == "compressed":          # zstd-compressed floats: the 64 zeroed bytes
        _zero_middle(data)
    elif kind == "compressed-bit":    # one bit of the same
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        data.write_bytes(bytes(raw))
    elif kind == "uncompressed":      # random integers: zstd stores the chunk as is
        _flip_in(data, np.asarray(state["raw"]).tobytes()[4096:8192])
    elif kind == "truncated":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif kind == "deleted":
        data.unlink()
    elif kind == "metadata":          # Orbax's tree metadata, one character changed
        meta = step_dir / "state" / "_METADATA"
        text = meta.read_text()
        meta.write_text(text.replace('"', "'", 1))
        rel = "state/_METADATA"
    return rel


KINDS = ["compressed", "compressed-bit", "uncompressed", "truncated", "deleted", "metadata"]
SILENT = ("compressed-bit", "uncompressed")   # restored wrong without a word, before manifests


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_checkpoint_is_named_in_one_line(tmp_path, kind):
    state = _rand(kind)
    _save(tmp_path, state)
    step_dir = ckpt_root(tmp_path) / "1"
    assert _verify(tmp_path) == "verified"
    manifest = json.loads((step_dir / integrity.MANIFEST).read_text())
    assert "state/_METADATA" in manifest["files"] and "data/process_0.json" in manifest["files"]
    rel = _corrupt(step_dir, kind, state)
    with pytest.raises(IntegrityError) as e:
        _verify(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"checkpoint {step_dir} is corrupt: {rel} "), msg
    # Without the manifest: either one line too, or wrong values that nothing else notices
    # (one bit of a zstd frame, which has no checksum; a chunk zstd stored uncompressed):
    # which is why the manifest exists.
    try:
        restored = _restore(tmp_path, state)
    except UserError as e:
        assert "\n" not in str(e) and f"checkpoint {step_dir} cannot be read" in str(e)
        assert kind not in SILENT
    else:
        assert kind in SILENT, "restore read a damaged checkpoint without complaint"
        wrong = [k for k in state if not np.array_equal(np.asarray(restored[k]),
                                                        np.asarray(state[k]))]
        assert wrong == (["w"] if kind == "compressed-bit" else ["raw"])


def test_checkpoints_command_lists_verified_corrupt_incomplete_and_no_manifest(tmp_path,
                                                                               capsys):
    state = _rand()
    _save(tmp_path, state, steps=(1, 2, 3))
    w = str(tmp_path)
    assert main(["checkpoints", "--workdir", w, "--verify"]) == 0
    out = capsys.readouterr().out
    assert out.count(" verified") == 3, out
    _corrupt(ckpt_root(tmp_path) / "3", "uncompressed", state)
    assert main(["checkpoints", "--workdir", w]) == 0        # not read: not noticed
    assert capsys.readouterr().out.count(" unchecked") == 3
    assert main(["checkpoints", "--workdir", w, "--verify"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == ["1", "2", "3"], lines
    assert "verified" in lines[2] and "corrupt: state/ocdbt.process_0/d/" in lines[3], lines
    (ckpt_root(tmp_path) / "1" / integrity.MANIFEST).unlink()   # as gptjax wrote it before
    shutil.copytree(ckpt_root(tmp_path) / "2", ckpt_root(tmp_path) / "4.orbax-checkpoint-tmp")
    assert main(["checkpoints", "--workdir", w, "--verify"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "no manifest" in lines[1] and "incomplete: never committed" in lines[4], lines
    assert any(ln.startswith("no manifest: written by a gptjax from before") for ln in lines)
    assert _restore(tmp_path, state, 1)["raw"].shape == (4096,)   # old runs still restore


# ----------------------------------------------------------------------------- workdir files


def _workdir(tmp_path) -> Path:
    w = tmp_path / "run"
    w.mkdir()
    write_config(str(w), get_config("configs/smoke.py:tiny"))
    save_tokenizer(str(w), CharTokenizer(list("abc \n"), eos=False))
    assert set(json.loads((w / integrity.MANIFEST).read_text())["files"]) == {
        "config.json", CHAR_FILE}
    return w


@pytest.mark.parametrize("name", ["config.json", CHAR_FILE])
@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "no-manifest"])
def test_garbage_config_or_tokenizer_is_one_line(tmp_path, capsys, name, manifest):
    w = _workdir(tmp_path)
    if not manifest:
        (w / integrity.MANIFEST).unlink()
    (w / name).write_bytes(b"\x00garbage{" * 7)
    for command in (["sample", "--workdir", str(w)], ["eval", "--workdir", str(w)]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("gptjax: error:"), err
        assert name in err[0] and "Traceback" not in err[0], err
        if manifest:
            assert f"workdir {w} is corrupt: {name} has 63 bytes" in err[0], err
    if name == CHAR_FILE:
        with pytest.raises(UserError, match=CHAR_FILE):
            load_tokenizer(str(w), "char")
    else:
        with pytest.raises(UserError, match="config.json"):
            read_config(str(w))


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One uninterrupted run keeping every checkpoint (4, 8, 12)."""
    workdir = tmp_path_factory.mktemp("reference")
    proc = run_train(workdir, extra=["--config.train.keep_checkpoints=0"])
    assert proc.returncode == 0, output(proc)
    assert complete_steps(workdir) == [4, 8, 12]
    return {"workdir": workdir, "losses": read_losses(workdir), "state": read_state(workdir)}


def _stopped_at_8(reference, tmp_path) -> Path:
    """The reference run as it was after step 8 (the kill -9 tests show that equals a run
    of 8 steps): checkpoint 12 removed, metrics after 8 are dropped by the resume."""
    w = tmp_path / "run"
    shutil.copytree(reference["workdir"], w)
    shutil.rmtree(ckpt_root(w) / "12")
    return w


@pytest.mark.parametrize("kind", [
    "compressed",
    *[pytest.param(k, marks=pytest.mark.slow) for k in KINDS[1:] if k != "uncompressed"],
])
def test_train_moves_a_corrupt_checkpoint_aside_and_resumes_bit_identical(reference, tmp_path,
                                                                         capsys, kind):
    """(No chunk of the tiny train state is stored uncompressed: that case is the one above.)"""
    w = _stopped_at_8(reference, tmp_path)
    rel = _corrupt(ckpt_root(w) / "8", kind, {})
    if kind == "compressed":  # eval stops with the one line, and takes an older --step
        assert main(["eval", "--workdir", str(w)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"checkpoint {ckpt_root(w) / '8'} is corrupt: {rel}" in err[0]
        assert "older checkpoints (4) can be chosen with --step" in err[0], err
        assert main(["eval", "--workdir", str(w), "--step", "4"]) == 0
        assert capsys.readouterr().out.startswith("step 4: eval loss")
    proc = run_train(w)
    assert proc.returncode == 0, output(proc)
    lines = [ln for ln in proc.stdout.splitlines() if "is corrupt" in ln]
    assert len(lines) == 1, output(proc)
    assert lines[0].startswith(f"gptjax: checkpoint {ckpt_root(w) / '8'} is corrupt: {rel} ")
    assert "moved it to" in lines[0] and "Traceback" not in proc.stderr, output(proc)
    assert "resumed at step 4" in proc.stdout, output(proc)
    moved = list((w / checkpoint.CORRUPT_DIR).iterdir())
    assert [p.name.split("-")[0] for p in moved] == ["8"]          # kept, not deleted
    assert (moved[0] / integrity.MANIFEST).is_file()
    assert_same_run(w, reference)
    final = read_state(w)
    for name, value in reference["state"].items():
        assert np.array_equal(final[name], value), name


@pytest.mark.slow
def test_on_corrupt_stop_is_one_line_and_moves_nothing(reference, tmp_path):
    w = _stopped_at_8(reference, tmp_path)
    _corrupt(ckpt_root(w) / "8", "truncated", {})
    proc = run_train(w, extra=["--config.train.on_corrupt=stop"])
    assert proc.returncode == 2, output(proc)
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("gptjax: error:")]
    assert len(err) == 1 and "is corrupt" in err[0] and "train.on_corrupt=stop" in err[0]
    assert "Traceback" not in proc.stderr and complete_steps(w) == [4, 8]
    assert not (w / checkpoint.CORRUPT_DIR).exists()


# ----------------------------------------------------------------------------- two hosts


def _two_process_train(workdir: Path, fault: str = "", extra: dict | None = None):
    cmd = [sys.executable, "launch/multiprocess.py", "-n", "2", "--devices", "2",
           "--timeout", "120", "--grace", "3", "--", sys.executable, "tests/faults.py",
           "train", "--config", "configs/smoke.py:tiny", "--config.data.source=synthetic",
           "--config.train.log_every=1", "--config.train.eval_every=-1",
           "--config.train.plot=false", "--config.train.keep_checkpoints=0",
           f"--config.train.steps={STEPS}", "--config.train.ckpt_every=4",
           "--config.mesh.data=4", "--config.mesh.dcn_data=2", "--workdir", str(workdir)]
    env = subprocess_env(fault, extra=extra)
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)  # (subprocess_env keeps XLA_FLAGS but its device count)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _one_device_state(workdir: Path) -> dict:
    """Every array of the newest checkpoint, restored onto one device (written on four)."""
    abstract, shardings = abstract_train_state(read_config(str(workdir)),
                                               sharding.single_device_mesh())
    ckpt = checkpoint.Checkpointer(str(workdir), read_only=True)
    state, _ = ckpt.restore(ckpt.latest_step(), with_shardings(abstract, shardings),
                            with_data=False)
    ckpt.close()
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(state)[0]}


@pytest.mark.slow
def test_a_save_cut_short_by_a_crashed_host_is_incomplete_and_never_restored(tmp_path,
                                                                            capsys):
    """Two processes; process 1 is killed (-9) while the save of step 8 is being written: the
    checkpoint is never committed, `gptjax checkpoints` says incomplete (exit 1), and the rerun
    resumes from 4 and ends bit-identical to an uninterrupted two-process run."""
    ref, w = tmp_path / "ref", tmp_path / "run"
    proc = _two_process_train(ref)
    assert proc.returncode == 0, output(proc)
    proc = _two_process_train(w, "kill_after_save:8", {"GPTJAX_FAULT_PROCESS": "1"})
    assert proc.returncode != 0, output(proc)
    assert complete_steps(w) == [4], output(proc)
    assert main(["checkpoints", "--workdir", str(w), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "verified" in out and "incomplete" in out, out
    proc = _two_process_train(w)
    assert proc.returncode == 0, output(proc)
    assert "resumed at step 4" in proc.stdout, output(proc)
    assert read_losses(w) == read_losses(ref)
    got, want = _one_device_state(w), _one_device_state(ref)
    for name, value in want.items():
        assert np.array_equal(got[name], value), name
