"""`gptjax data bench`: tokens/s the input pipeline delivers from pre-tokenized data, with the
numpy loader and (where TensorFlow is installed) the tf.data one, after a short warm-up."""

from __future__ import annotations

import os
import platform
import time

from gptjax.data import make_tokenizer, pipeline, registry
from gptjax.errors import UserError


def _loaders(loader: str) -> list[str]:
    loaders = ["numpy", "tf"] if loader == "both" else [loader]
    if "tf" in loaders and not pipeline._tf_available():
        if loader == "tf":
            raise UserError("--loader tf needs TensorFlow")
        loaders.remove("tf")
    return loaders


def bench(config, loader: str = "both", batches: int = 200, workdir: str | None = None) -> dict:
    """-> {machine, batch_size, seq_len, split_tokens, LOADER: {tokens_per_s, batches_per_s}}
    for each loader measured ("numpy", "tf" or "both")."""
    if registry.of(config).batches is not None:
        real = "|".join(registry.names(lambda s: s.batches is None))
        raise UserError(f"bench measures reading real tokens; use data.source={real}")
    tok = make_tokenizer(config, workdir)
    tokens = pipeline.split_tokens(config, tok, config.data.train_split, workdir)
    d = config.data
    windows = pipeline.Windows(tokens.size, d.seq_len, d.seed, d.shuffle, "training split")
    loaders = _loaders(loader)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
              "batch_size": config.train.batch_size, "seq_len": d.seq_len,
              "split_tokens": int(tokens.size)}
    n = max(1, batches)
    for name in loaders:
        it = pipeline.TrainIterator(tokens, windows, config.train.batch_size, 0, 1,
                                    loader=name, prefetch=d.prefetch)
        for _ in range(min(10, n)):   # warm-up: thread / tf.data start, page cache
            next(it)
        start = time.perf_counter()
        count = 0
        for _ in range(n):
            count += next(it)["inputs"].size
        dt = time.perf_counter() - start
        it.close()
        result[name] = {"tokens_per_s": round(count / dt), "batches_per_s": round(n / dt, 1)}
    return result
