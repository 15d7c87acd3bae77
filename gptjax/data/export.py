"""`gptjax data export`: tokenize a config's splits once into a shards directory that any
later run (or plain numpy, no TensorFlow) reads: `--config.data.source=shards
--config.data.shards_dir=OUT`. A split already in the run's token cache is copied, not
tokenized again. `worker` / `num_workers` make one of N independent jobs (a SLURM array, a
loop of background processes): each tokenizes its contiguous block of every split's documents,
and the one that finds every part there writes the split's index (any worker run again after
the others also does)."""

from __future__ import annotations

import json

from gptjax.data import pipeline, registry
from gptjax.data.store import INDEX, META, TokenStore, check_workers, split_file
from gptjax.data.tokenizer import make_tokenizer
from gptjax.errors import UserError
from gptjax.storage import paths


def export_shards(config, out: str, workdir: str | None = None, splits=(), worker: int = 0,
                  num_workers: int = 1) -> tuple:
    """Writes `splits` (default: the train and eval splits) of config.data as shards in `out`
    with the tokenizer beside them -> (resolved out, {split: tokens, or None while other
    workers' parts are missing}, vocab size)."""
    check_workers(worker, num_workers)
    splits = list(splits) or [s for s in (config.data.train_split, config.data.eval_split) if s]
    source = registry.of(config)
    if source.documents is None:
        texts = "|".join(registry.names(lambda s: s.documents is not None))
        raise UserError(f"export tokenizes text: data.source={texts}, not {source.name!r}")
    tok = make_tokenizer(config, workdir)
    out = paths.prepare_dir(out, "--out")
    index = paths.join(out, INDEX)
    if paths.exists(index) and json.loads(paths.read_text(index)).get("tokenizer") \
            != tok.fingerprint:
        raise UserError(f"{out} holds shards of another tokenizer; choose a new --out")
    store = TokenStore.create(out, tok, source.key(config))
    if worker == 0:
        tok.save(out)
    written = {}
    for split in splits:
        cache = pipeline.token_store(config, tok, workdir)
        if not store.has(split) and cache.has(split) and \
                paths.resolve(cache.directory) != out:
            _copy_split(cache, store, split)    # already tokenized: copy the cache's split
        elif not store.has(split):
            pipeline.prepare_part(config, tok, split, workdir, worker, num_workers, store=store)
            store.finish_split(split, source.what(config), num_workers)
        meta = store.meta(split)
        written[split] = meta["num_tokens"] if meta else None
    return out, written, tok.vocab_size


def _copy_split(src: TokenStore, dst: TokenStore, split: str) -> None:
    """Every file of a split, its index (or single-file meta) last."""
    meta = src.meta(split)
    if "shards" not in meta:
        names = [meta["file"], split_file(split) + META]
        for name in names:
            paths.copy(paths.join(src.directory, name), paths.join(dst.directory, name))
        return
    a, b = src.split_dir(split), dst.split_dir(split)
    paths.makedirs(b)
    for shard in meta["shards"]:
        paths.copy(paths.join(a, shard["file"]), paths.join(b, shard["file"]))
    paths.copy(paths.join(a, INDEX), paths.join(b, INDEX))
