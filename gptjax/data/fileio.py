"""Small file helpers shared by the tokenizers and token stores: local paths or `gs://` URLs.

URLs (a `gs://` workdir on a TPU pod) go through TensorFlow's file system layer, imported only
then; local files are written under a unique temporary name and renamed, so a crash or several
processes writing the same file never leave half of it behind.
"""

from __future__ import annotations

import os
import socket
import uuid


def is_url(path: str) -> bool:
    return "://" in path


def join(directory: str, name: str) -> str:
    if is_url(directory):
        return directory.rstrip("/") + "/" + name
    return os.path.join(directory, name)


def isfile(path: str) -> bool:
    if is_url(path):
        import tensorflow as tf
        return tf.io.gfile.exists(path)
    return os.path.isfile(path)


def read(path: str) -> bytes:
    if is_url(path):
        import tensorflow as tf
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def tmp_name(path: str) -> str:
    """Unique per host and process: several hosts may write one directory on a shared disk."""
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def atomic_write(path: str, data: bytes) -> None:
    if is_url(path):
        import tensorflow as tf
        tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
