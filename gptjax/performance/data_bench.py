"""`gptjax data bench`: tokens/s the input pipeline delivers from pre-tokenized data, with the
numpy loader and (where TensorFlow is installed) the tf.data one, after a short warm-up: the
rows of one process of `processes` (what each host reads), with the byte ranges and bytes it
read per batch from a sharded store (local shards or a bucket). `prepare` times one worker
tokenizing its part of the training split (tokens/s per preparation worker)."""

from __future__ import annotations

import os
import platform
import tempfile
import time

from gptjax.data import make_tokenizer, pipeline, registry
from gptjax.data.store import TokenStore
from gptjax.errors import UserError


def _loaders(loader: str) -> list[str]:
    loaders = ["numpy", "tf"] if loader == "both" else [loader]
    if "tf" in loaders and not pipeline._tf_available():
        if loader == "tf":
            raise UserError("--loader tf needs TensorFlow")
        loaders.remove("tf")
    return loaders


def bench(config, loader: str = "both", batches: int = 200, workdir: str | None = None,
          processes: int = 1) -> dict:
    """-> {machine, batch_size, seq_len, split_tokens, processes, LOADER: {tokens_per_s,
    batches_per_s[, ranges_per_batch, bytes_per_batch]}} for each loader measured ("numpy",
    "tf" or "both"), reading the rows of process 0 of `processes`."""
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
              "split_tokens": int(tokens.size), "processes": processes}
    pipeline.host_batch(config, 0, processes)   # the batch divides among the processes
    n = max(1, batches)
    for name in loaders:
        it = pipeline.TrainIterator(tokens, windows, config.train.batch_size, 0, processes,
                                    loader=name, prefetch=d.prefetch)
        for _ in range(min(10, n)):   # warm-up: thread / tf.data start, page cache
            next(it)
        it.close()           # the prefetched batches are not counted
        it.position = 0
        before = _counters(tokens)
        start = time.perf_counter()
        count = 0
        for _ in range(n):
            count += next(it)["inputs"].size
        dt = time.perf_counter() - start
        it.close()
        r = {"tokens_per_s": round(count / dt), "batches_per_s": round(n / dt, 1)}
        if before is not None:   # read ahead by the prefetch: up to `prefetch` batches more
            after = _counters(tokens)
            r["ranges_per_batch"] = round((after[0] - before[0]) / n, 1)
            r["bytes_per_batch"] = round((after[1] - before[1]) / n)
        result[name] = r
    return result


def _counters(tokens):
    if not hasattr(tokens, "ranges_read"):
        return None
    return tokens.ranges_read, tokens.bytes_read


def prepare(config, workdir: str | None = None, num_workers: int = 1) -> dict:
    """Times worker 0 of `num_workers` tokenizing its part of the training split into a
    temporary store -> {tokens, documents, seconds, tokens_per_s, tokenizer}."""
    source = registry.of(config)
    if source.documents is None:
        raise UserError(f"--prepare tokenizes text; data.source={source.name!r} has none")
    tok = make_tokenizer(config, workdir)
    with tempfile.TemporaryDirectory(prefix="gptjax-prepare-bench-") as out:
        store = TokenStore.create(out, tok, source.key(config))
        docs = list(source.read_part(config, config.data.train_split, 0, num_workers))
        start = time.perf_counter()
        part = store.write_part(config.data.train_split, tok, docs,
                                bool(config.data.tokenizer.add_eos), "bench", 0, num_workers,
                                int(config.data.shard_tokens))
        dt = time.perf_counter() - start
    return {"tokens": part["num_tokens"], "documents": part["num_documents"],
            "seconds": round(dt, 2), "tokens_per_s": round(part["num_tokens"] / dt),
            "tokenizer": tok.kind, "num_workers": num_workers}
