"""gptjax: pretrain GPT-style language models with JAX/Flax."""

import os

# TensorFlow is only the input pipeline's: keep it quiet and off the accelerators.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# gs:// paths through gcsfs, in gptjax and in Orbax alike (gptjax/storage/paths.py): etils would
# otherwise pick tf.io.gfile whenever TensorFlow is installed. Read when etils first opens a URL.
os.environ.setdefault("EPATH_USE_TF", "false")

__version__ = "0.1.0"


def _quiet_cuda_plugin() -> None:
    """jax's CUDA plugin on a machine without an NVIDIA GPU (installed to compile for GPUs,
    gptjax/hardware/gpu_clusters.py): run on the CPU, and keep the lines its libraries print
    while jax loads them ("Could not find cuda drivers on your machine ...", straight to file
    descriptor 2 from C++) out of stderr, where gptjax's errors are one line. Anything else
    written meanwhile is passed on."""
    import importlib.util
    import sys
    import tempfile

    if importlib.util.find_spec("jax_cuda12_plugin") is None or any(
            os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/accel0", "/dev/vfio/0")):
        return
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import jax  # noqa: F401  (loads the plugin's CUDA libraries)
            from jax._src import xla_bridge  # registers the plugin; backends stay unmade

            getattr(xla_bridge, "_discover_and_register_pjrt_plugins", lambda: None)()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if "cudart_stub.cc" not in line and "before absl::InitializeLog" not in line:
                    sys.stderr.write(line)


_quiet_cuda_plugin()
