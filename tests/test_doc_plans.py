"""The `gptjax info`, `plan` and `compile` commands of README.md and docs/*.md run as written,
read from the Markdown (tests/doc_commands.py), in the default suite when they are quick: every
`info`, every `plan` that needs no TPU or GPU compile, every `compile` of a small config. The others
(GPT-3 sizes on their slices, `plan --device v5p` with libtpu installed) run in the slow suite
(tests/test_docs.py::test_commands_run)."""

import pytest
from conftest import HAS_CUDA_PLUGIN, HAS_LIBTPU
from doc_commands import commands

from gptjax import cli
from gptjax.hardware.gpu_clusters import GPUS, is_gpu_topology
from gptjax.hardware.tpu_slices import GENERATIONS

SMALL = ("configs/smoke.py", "configs/gpt2.py:124m")


def _quick(cmd) -> bool:
    argv = cmd.argv
    if cmd.tag is not None or argv[0] != "gptjax" or argv[1] not in ("info", "plan", "compile"):
        return False
    if argv[1] == "plan":  # plan compiles for TPUs with libtpu, for GPUs with the CUDA plugin
        compiled = (*GENERATIONS, *(GPUS if HAS_CUDA_PLUGIN else ()))
        return not any(f"--device {g}" in cmd.text for g in compiled)
    return argv[1] == "info" or any(f"--config {c} " in cmd.text + " " for c in SMALL)


QUICK = [c for c in commands() if _quick(c)]


def test_every_kind_is_found():
    kinds = {c.argv[1] for c in QUICK}
    assert kinds == {"info", "plan", "compile"}, kinds


@pytest.mark.parametrize("cmd", QUICK, ids=lambda c: c.id)
def test_command_runs(cmd, capsys):
    gpu = cmd.argv[1] == "compile" and is_gpu_topology(cmd.argv[cmd.argv.index("--topology") + 1])
    if cmd.argv[1] == "compile" and gpu and not HAS_CUDA_PLUGIN:
        pytest.skip("the CUDA plugin is not installed (the gpu-compile extra)")
    if cmd.argv[1] == "compile" and not gpu and not HAS_LIBTPU:
        pytest.skip("libtpu not installed (the tpu extra: pip install -e '.[tpu]')")
    assert cli.main(cmd.argv[1:]) == 0, cmd.text
    assert capsys.readouterr().out.strip()
