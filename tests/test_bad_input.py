"""Bad input to `gptjax train`: every case is exit status 2, exactly one line on stderr
(`gptjax: error: ...` naming the problem), and no Python traceback. Each case is a real
subprocess; the cases that need an existing checkpoint copy one tiny trained workdir."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from fault_helpers import REPO, TINY, output, run_train, subprocess_env

# id -> (extra args, devices, needs a trained workdir, words the error line must contain)
CASES = {
    "unknown_config_key": (["--config.train.stpes=5"], 1, False,
                           ["'train.stpes'", "train.steps"]),
    "wrong_value_type": (["--config.train.steps=ten"], 1, False, ["train.steps", "int"]),
    "config_group_set_to_value": (["--config.train=5"], 1, False, ["train", "group"]),
    "unknown_config_file": (["--config", "configs/nope.py"], 1, False, ["configs/nope.py"]),
    "bad_choice": (["--config.train.nonfinite=maybe"], 1, False, ["nonfinite", "skip", "stop"]),
    "heads_not_divisible_by_tensor_axis": (
        ["--config.mesh.data=-1", "--config.mesh.tensor=2", "--config.model.num_heads=3"], 2,
        False, ["num_heads=3", "tensor=2"]),
    "batch_not_divisible_by_data_x_fsdp": (
        ["--config.train.batch_size=12", "--config.mesh.data=-1"], 8, False,
        ["batch_size=12", "data x fsdp"]),
    "grad_accum_not_dividing_batch": (["--config.train.grad_accum=3"], 1, False,
                                      ["batch_size=8", "grad_accum=3"]),
    "seq_len_above_max_positions": (["--config.data.seq_len=32"], 1, False,
                                    ["seq_len=32", "max_seq_len=16"]),
    "mesh_larger_than_device_count": (["--config.mesh.data=16"], 1, False,
                                      ["16 devices", "only 1"]),
    "missing_dataset_files": (["--config.data.source=files",
                               "--config.data.files=/nonexistent/gptjax/*.txt"], 1, False,
                              ["/nonexistent/gptjax/*.txt"]),
    "vocab_mismatch_tokenizer_vs_checkpoint": (["--config.model.vocab_size=80"], 1, True,
                                               ["65", "80", "vocab"]),
    "checkpoint_from_incompatible_config": (["--config.model.d_ff=64"], 1, True,
                                            ["mlp", "shape", "(2, 16, 32)", "(2, 16, 64)"]),
    "workdir_is_a_file": ([], 1, False, ["is a file"]),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny synthetic run (vocab 65, d_ff 32) with one checkpoint."""
    w = tmp_path_factory.mktemp("trained") / "run"
    proc = run_train(w, steps=2, every=2)
    assert proc.returncode == 0, output(proc)
    return w


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2(case, tmp_path, request):
    extra, devices, needs_ckpt, words = CASES[case]
    workdir = tmp_path / "run"
    if needs_ckpt:
        shutil.copytree(request.getfixturevalue("trained"), workdir)
    if case == "workdir_is_a_file":
        workdir = tmp_path / "a_file"
        workdir.write_text("not a directory\n")
    base = list(TINY)
    if "--config" in extra:  # replaces the config file
        base = base[2:]
    cmd = [sys.executable, "-m", "gptjax", "train", *base, "--workdir", str(workdir),
           "--config.train.steps=4", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(devices=devices),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, output(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, output(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, output(proc)
    assert lines[0].startswith("gptjax: error: "), output(proc)
    for word in words:
        assert word in lines[0], f"{word!r} missing from the error line: {lines[0]}"
    if case == "workdir_is_a_file":
        assert workdir.read_text() == "not a directory\n"


@pytest.mark.slow
def test_missing_tfds_download_fails_fast_naming_manual_dir(tmp_path):
    """tiny_shakespeare not prepared and no manual_dir: one line naming manual_dir, without
    TFDS trying its download for minutes (this case imports TensorFlow: slow)."""
    cmd = [sys.executable, "-m", "gptjax", "train", "--config", "configs/smoke.py:tiny",
           "--workdir", str(tmp_path / "run"), f"--config.data.data_dir={tmp_path / 'tfds'}",
           f"--config.data.manual_dir={tmp_path / 'nothing_here'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=subprocess_env(extra={"GPTJAX_OFFLINE": "1"}))
    assert proc.returncode == 2, output(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, output(proc)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("gptjax: error: ") and "manual_dir" in lines[-1], output(proc)


@pytest.mark.parametrize("argv", [
    ["compress", "--workdir", "{trained}", "--out", "gs://bucket/report", "--methods", "int8"],
    ["compress", "--workdir", "{trained}", "--out", "{tmp}/report", "--scratch",
     "gs://bucket/scratch", "--methods", "int8"],
    ["sweep", "--config", "configs/scaling.py:micro", "--workdir", "gs://bucket/sweep"],
    ["convert", "export", "--workdir", "{trained}", "--out", "gs://bucket/hf"],
], ids=["compress_out", "compress_scratch", "sweep", "convert_export"])
def test_a_url_where_only_local_directories_work_is_one_line(argv, trained, tmp_path):
    """Never a local directory named `gs:` (what os.path.abspath makes of a URL)."""
    argv = [a.format(trained=trained, tmp=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "gptjax", *argv], cwd=REPO,
                          env=subprocess_env(devices=1), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, output(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptjax: error: ") and "gs://bucket" in \
        lines[0], output(proc)
    assert not (REPO / "gs:").exists() and not list(tmp_path.rglob("gs:*"))


@pytest.mark.parametrize("value,words", [("1,x", ["--decode-batches", "'1,x'", "integers"]),
                                         ("0", ["--decode-batches", ">= 1"])])
def test_compress_decode_batches_not_whole_numbers_is_one_line(value, words, trained, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gptjax", "compress", "--workdir", str(trained),
                           "--out", str(tmp_path / "report"), "--methods", "int8",
                           "--decode-batches", value], cwd=REPO, env=subprocess_env(devices=1),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, output(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptjax: error: "), output(proc)
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "report").exists()
