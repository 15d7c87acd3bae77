"""The weights file of a quantized workdir, `WORKDIR/quantized.npz` (`gptjax quantize`).

QArray leaves (`qwix.QArray`: integer values and their scales) are stored as two arrays each,
int4 values packed two per byte; float leaves as they are; a JSON record (mode, group, step, and
each leaf's shape and width) rides along. Written in one piece: one object on a bucket, an atomic
rename on a local disk. `gptjax.workdir.open_run` reads it when a workdir holds one.
"""

from __future__ import annotations

import io
import json

import flax.traverse_util as traverse
import jax.numpy as jnp
import numpy as np
import qwix

from gptjax.storage import integrity, paths

FILE = "quantized.npz"  # a quantized workdir's weights (no checkpoints/ needed)


def bits(x) -> int:
    dtype = jnp.dtype(x.dtype)
    return jnp.iinfo(dtype).bits if jnp.issubdtype(dtype, jnp.integer) else 8 * dtype.itemsize


def _pack_int4(q: np.ndarray) -> np.ndarray:
    """int4 values -> bytes holding two values each (low nibble first)."""
    flat = q.astype(np.int8).reshape(-1) & 0xF
    flat = np.pad(flat, (0, flat.size % 2)).astype(np.uint8)
    return flat[0::2] | (flat[1::2] << 4)


def _unpack_int4(packed: np.ndarray, shape) -> np.ndarray:
    nibbles = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(-1).astype(np.int8)
    nibbles = np.where(nibbles > 7, nibbles - 16, nibbles)
    return nibbles[:int(np.prod(shape))].reshape(shape)


def save(directory: str, params, info: dict) -> str:
    """Writes a quantized param tree to DIRECTORY/quantized.npz (int4 packed two per byte);
    `info` (mode, group, step) is kept beside the arrays. -> the file's path."""
    arrays, leaves = {}, {}
    for i, (path, x) in enumerate(traverse.flatten_dict(params, sep="/").items()):
        if isinstance(x, qwix.QArray):
            q = np.asarray(x.qvalue)
            width = bits(x.qvalue)
            arrays[f"q{i}"] = _pack_int4(q) if width == 4 else q
            arrays[f"s{i}"] = np.asarray(x.scale)
            leaves[path] = {"i": i, "bits": width, "shape": list(q.shape)}
        else:
            arrays[f"a{i}"] = np.asarray(x)
            leaves[path] = {"i": i}
    meta = json.dumps({**info, "leaves": leaves})
    path = paths.join(directory, FILE)
    buf = io.BytesIO()   # one object on a bucket, an atomic rename locally
    np.savez(buf, __meta__=np.frombuffer(meta.encode(), np.uint8), **arrays)
    paths.write_bytes(path, buf.getvalue())
    integrity.update_manifest(directory, [FILE])
    return path


def exists(workdir: str) -> bool:
    return paths.isfile(paths.join(workdir, FILE))


def load(workdir: str):
    """-> (param tree with QArray leaves, info dict) of a workdir written by `save`."""
    with np.load(io.BytesIO(paths.read_bytes(paths.join(workdir, FILE)))) as f:
        meta = json.loads(f["__meta__"].tobytes().decode())
        flat = {}
        for path, leaf in meta.pop("leaves").items():
            i = leaf["i"]
            if "bits" not in leaf:
                flat[path] = jnp.asarray(f[f"a{i}"])
                continue
            qtype = jnp.int4 if leaf["bits"] == 4 else jnp.int8
            q = f[f"q{i}"]
            q = _unpack_int4(q, leaf["shape"]) if leaf["bits"] == 4 else q
            flat[path] = qwix.QArray(jnp.asarray(q).astype(qtype), jnp.asarray(f[f"s{i}"]),
                                     qtype=qtype)
    return traverse.unflatten_dict(flat, sep="/"), meta
