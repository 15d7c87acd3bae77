"""`gptjax data export`: tokenize a config's splits once into a shards directory that any
later run (or plain numpy, no TensorFlow) reads: `--config.data.source=shards
--config.data.shards_dir=OUT`. A split already in the run's token cache is copied, not
tokenized again."""

from __future__ import annotations

import json

from gptjax.data import pipeline, registry
from gptjax.data.store import META, TokenStore, split_file
from gptjax.data.tokenizer import make_tokenizer
from gptjax.errors import UserError
from gptjax.storage import paths


def export_shards(config, out: str, workdir: str | None = None, splits=()) -> tuple:
    """Writes `splits` (default: the train and eval splits) of config.data as shards in `out`
    with the tokenizer beside them -> (resolved out, {split: tokens}, vocab size)."""
    splits = list(splits) or [s for s in (config.data.train_split, config.data.eval_split) if s]
    source = registry.of(config)
    if source.documents is None:
        texts = "|".join(registry.names(lambda s: s.documents is not None))
        raise UserError(f"export tokenizes text: data.source={texts}, not {source.name!r}")
    tok = make_tokenizer(config, workdir)
    out = paths.prepare_dir(out, "--out")
    index = paths.join(out, "index.json")
    if paths.exists(index) and json.loads(paths.read_text(index)).get("tokenizer") \
            != tok.fingerprint:
        raise UserError(f"{out} holds shards of another tokenizer; choose a new --out")
    store = TokenStore.create(out, tok, source.key(config))
    tok.save(out)
    written = {}
    for split in splits:
        cache = pipeline.token_store(config, tok, workdir)
        if cache.has(split) and paths.resolve(cache.directory) != out:
            meta = cache.meta(split)   # already tokenized: copy the cache's split
            for name in (meta["file"], split_file(split) + META):
                paths.copy(paths.join(cache.directory, name), paths.join(out, name))
        elif not store.has(split):
            store.write_split(split, tok, source.read(config, split),
                              add_eos=bool(config.data.tokenizer.add_eos), what="export")
        written[split] = store.meta(split)["num_tokens"]
    return out, written, tok.vocab_size
