"""Test setup: CPU only, 8 virtual devices (for sharding tests), data from ../shared, and one
persistent XLA compilation cache for the session (the test processes, one per pytest-xdist
worker, and every `gptjax` subprocess they start: most tests compile the same tiny programs
again; the cache starts empty each session and is removed at its end, so every program is still
compiled once).

XLA:CPU compiles with LLVM's optimisations off (`FAST_COMPILE`): the suite's programs are tiny
and compiling is most of its time, so the slower code costs less than the optimising saves (the
default suite took 24 min instead of 49 min in one process, in a fresh clone on the 2-core
development machine, README.md "Tests"). XLA's own HLO passes (fusion, layouts, SPMD
partitioning) still run; `gptjax bench` and every command outside the tests compile with XLA's
defaults. Tests that set a subprocess's XLA_FLAGS keep this flag."""

import atexit
import importlib.util
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {FAST_COMPILE}"
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gptjax-tests-xla-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
os.environ.setdefault("GPTJAX_MANUAL_DIR", str(SHARED / "data" / "tiny_shakespeare"))
# The TPU compiler (the `tpu` extra): tests that compile for a TPU slice skip without it.
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu not installed (the tpu extra: "
                                                          "pip install -e '.[tpu]')")
# XLA:GPU's compiler (the gpu-compile extra: jax's CUDA plugin and cuDNN): tests that compile
# for a GPU cluster skip without it.
HAS_CUDA_PLUGIN = importlib.util.find_spec("jax_cuda12_plugin") is not None
needs_cuda_plugin = pytest.mark.skipif(
    not HAS_CUDA_PLUGIN, reason="the CUDA plugin is not installed (the gpu-compile extra: "
                                "pip install -e '.[gpu-compile]')")


@pytest.fixture(scope="session")
def repo_dir() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    if not (SHARED / "data").is_dir():
        pytest.fail(f"test data missing: expected {SHARED}/data beside the repo")
    return SHARED


@pytest.fixture(scope="session")
def shakespeare_manual_dir(shared_dir) -> pathlib.Path:
    return shared_dir / "data" / "tiny_shakespeare"


@pytest.fixture(scope="session")
def austen_path(shared_dir) -> pathlib.Path:
    return shared_dir / "data" / "austen" / "austen.txt"
