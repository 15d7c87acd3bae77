"""gptjax: pretrain GPT-style language models with JAX/Flax."""

import os

# TensorFlow is only the input pipeline's: keep it quiet and off the accelerators.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# gs:// paths through gcsfs, in gptjax and in Orbax alike (gptjax/storage/paths.py): etils would
# otherwise pick tf.io.gfile whenever TensorFlow is installed. Read when etils first opens a URL.
os.environ.setdefault("EPATH_USE_TF", "false")

__version__ = "0.1.0"
