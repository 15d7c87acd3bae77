"""`gptjax compress`, `quantize`, `prune`, `trim` and `distill` on the command line: help,
clear one-line errors, and (slow) the whole report on the tiny model."""

import csv
import os
import re
import subprocess
import sys

import pytest
from compress_helpers import TINY, tiny, train_tiny
from conftest import FAST_COMPILE
from eval_helpers import tiny_workdir

from gptjax.cli import main
from gptjax.compression import surgery
from gptjax.data.tokenizer import SyntheticTokenizer
from gptjax.evaluation import incontext as tasks
from gptjax.evaluation.heldout import evaluate_workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gptjax(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE)
    return subprocess.run([sys.executable, "-m", "gptjax", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", ["compress", "prune", "trim", "quantize", "distill"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "--workdir" in capsys.readouterr().out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory, "compress", "--config.model.num_layers=3",
                      "--config.model.num_heads=4", "--config.model.head_dim=4")


@pytest.mark.parametrize("args,message", [
    (["compress", "--methods", "float,zip"], "choose from float, int8"),
    (["prune", "--sparsity", "1.0"], r"--sparsity 1.0: choose a fraction in \[0, 1\)"),
    (["prune", "--heads", "4"], "removing 4 of the 4 heads of each layer leaves none"),
    (["prune"], "nothing to prune"),
    (["trim", "--drop-layers", "3"], "the model has 3 layers"),
    (["quantize", "--mode", "int4", "--group", "5"], "does not divide"),
])
def test_bad_input_is_one_line(trained, tmp_path, capsys, args, message):
    command, rest = args[0], args[1:]
    code = main([command, "--workdir", str(trained), "--out", str(tmp_path / "out"), *rest])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(message, err), err


def test_student_of_another_vocabulary_is_one_line(trained, tmp_path, capsys):
    config, _, params = tiny(noisy=False, vocab_size=50)
    other = surgery.write_model(str(tmp_path / "v50"), config, SyntheticTokenizer(50), params)
    code = main(["distill", "--config", "configs/smoke.py:tiny", "--workdir",
                 str(tmp_path / "student"), f"--config.distill.teacher={trained}",
                 f"--config.distill.init_from={other}", *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "has a vocabulary of 50 tokens, the teacher" in err and "100" in err, err


def test_quantized_workdir_loads_without_the_float_checkpoint(trained, tmp_path, capsys):
    out = tmp_path / "int4"
    assert main(["quantize", "--workdir", str(trained), "--out", str(out), "--mode", "int4",
                 "--group", "0"]) == 0
    assert f"-> {out}/quantized.npz" in capsys.readouterr().out
    assert not (out / "checkpoints").exists()
    float_loss = evaluate_workdir(str(trained), batches=1)["loss"]
    result = evaluate_workdir(str(out), batches=1)
    assert result["step"] == 10 and abs(result["loss"] - float_loss) < 0.05


@pytest.mark.slow  # trains and scores every variant (~1.5 min)
def test_task_accuracy_of_each_variant_as_it_runs(tmp_path, shakespeare_manual_dir, repo_dir,
                                                  capsys):
    """The report's task columns: every variant scored as it runs (int8 weights quantized, w8a8
    through Qwix), the same numbers `gptjax evaluate-tasks` gives for the same workdir."""
    workdir = tiny_workdir(str(tmp_path / "run"), str(shakespeare_manual_dir / "input.txt"))
    task = str(repo_dir / "tasks" / "shakespeare_nextline")
    out, scratch = tmp_path / "report", tmp_path / "scratch"
    assert main(["compress", "--workdir", workdir, "--out", str(out), "--scratch", str(scratch),
                 "--methods", "float,int8,w8a8", "--recover-steps", "0", "--eval-batches", "1",
                 "--decode-batches", "1", "--decode-tokens", "2", "--repeats", "1",
                 "--tasks", task, "--task-limit", "24"]) == 0
    assert f"-> {out}/results.md" in capsys.readouterr().out
    column = "shakespeare_nextline 0-shot acc_norm"
    by = {row["variant"]: row for row in csv.DictReader(open(out / "results.csv"))}
    assert column in open(out / "results.md").read().splitlines()[0]
    for name, variant in (("float", workdir), ("int8", str(scratch / "int8"))):
        (result,), _ = tasks.evaluate_workdir(variant, [tasks.load_task(task)], [0], limit=24)
        assert float(by[name][column]) == pytest.approx(result["acc_norm"]), name
    assert 0.0 <= float(by["w8a8 (Qwix)"][column]) <= 1.0
    code = main(["compress", "--workdir", workdir, "--out", str(out), "--tasks", task,
                 "--shots", "0,x"])
    assert code == 2 and "--shots '0,x'" in capsys.readouterr().err


@pytest.mark.slow
def test_the_report_end_to_end(trained, tmp_path):
    out = tmp_path / "report"
    r = gptjax("compress", "--workdir", str(trained), "--out", str(out), "--recover-steps", "2",
               "--distill-steps", "2", "--eval-batches", "1", "--decode-tokens", "4",
               "--repeats", "1", "--scratch", str(tmp_path / "scratch"), timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"-> {out}/results.md" in r.stdout
    rows = list(csv.DictReader(open(out / "results.csv")))
    names = [row["variant"] for row in rows]
    assert names[:5] == ["float", "float +recovery", "int8", "int4", "w8a8 (Qwix)"]
    assert "sparse80 +recovery" in names and "drop2 +recovery" in names
    assert names[-3:] == ["half (1 layers)", "half +distill", "half +hard labels"]
    by = {row["variant"]: row for row in rows}
    # MB memory is the generate program's measured peak: quantized below float at run time.
    assert max(float(by["int8"]["mb_memory"]), float(by["int4"]["mb_memory"])) < float(
        by["float"]["mb_memory"])
    assert float(by["int4"]["mb_disk"]) < float(by["int8"]["mb_disk"]) < float(
        by["float"]["mb_disk"])
    assert int(by["heads25"]["heads"]) == 3 and int(by["neurons25"]["d_ff"]) == 24
    assert int(by["sparse50"]["nonzero"]) < int(by["float"]["nonzero"])
    assert (out / "compression.png").stat().st_size > 1000
