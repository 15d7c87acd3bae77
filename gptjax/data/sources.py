"""The built-in data sources (`data.source`), registered in `registry.py` on import.

    tfds       any TFDS text dataset (tfds_text.py)             documents -> tokenized once
    files      the user's .txt / .md / .jsonl files via a TFDS builder documents -> tokenized once
    shards     a token store written by `gptjax data export`     tokens (numpy only, no TF)
    synthetic  random tokens of model.vocab_size                 batches (no text, no store)

Adding a source is one more `registry.register(Source(...))` like these (docs/data.md).
"""

from __future__ import annotations

import hashlib
import json

from gptjax.data import registry, tfds_text
from gptjax.data.registry import Source, documents, source_key  # noqa: F401 - re-exported
from gptjax.data.synthetic import SyntheticIterator, SyntheticTokenizer
from gptjax.data.tfds_text import files_builder, tfds_builder  # noqa: F401 - re-exported
from gptjax.data.tokenizer import TOKENIZER_FILES, load_tokenizer
from gptjax.errors import UserError
from gptjax.storage import paths


def shards_dir(config) -> str:
    d = paths.resolve(config.data.shards_dir)   # a local directory or a bucket URL (copied there)
    if not paths.isdir(d):
        raise UserError(f"data.shards_dir={d!r} does not exist; write it with `gptjax data export`")
    return d


def _shards_tokenizer(config):
    tok = load_tokenizer(shards_dir(config))
    if tok is None:
        raise UserError(f"data.shards_dir={config.data.shards_dir!r} holds no tokenizer file "
                        f"({' or '.join(TOKENIZER_FILES)}); re-run `gptjax data export`")
    return tok


def _tfds_key(config) -> dict:
    d = config.data
    return {"tfds": d.tfds_name, "data_dir": d.data_dir, "text_key": d.text_key,
            "max_documents": d.max_documents}


def _files_key(config) -> dict:
    spec = json.dumps(tfds_text.files_spec(config), sort_keys=True)
    return {"files": hashlib.sha256(spec.encode()).hexdigest()[:16],
            "max_documents": config.data.max_documents}


registry.register(Source(
    name="tfds", help="any TFDS text dataset (lm1b, c4/en, tiny_shakespeare, ...)",
    keys=("tfds_name", "text_key", "data_dir", "manual_dir", "max_documents"),
    required={"tfds_name": "NAME (e.g. tiny_shakespeare)"},
    documents=tfds_text.tfds_documents, part=tfds_text.tfds_part, cache_key=_tfds_key,
    label=lambda config: config.data.tfds_name, loader="tf"))

registry.register(Source(
    name="files", help="your own .txt / .md / .jsonl files, through gptjax's TFDS builder",
    keys=("files", "jsonl_key", "holdout_fraction", "encoding_errors", "data_dir",
          "max_documents"),
    required={"files": "GLOB[,GLOB...] (.txt, .md or .jsonl)"},
    documents=tfds_text.files_documents, part=tfds_text.files_part, cache_key=_files_key,
    loader="tf"))

registry.register(Source(
    name="shards", help="a token store written by `gptjax data export` (no TensorFlow needed)",
    keys=("shards_dir",),
    required={"shards_dir": "DIR (a directory written by `gptjax data export`)"},
    store_dir=shards_dir, tokenizer=_shards_tokenizer))

registry.register(Source(
    name="synthetic", help="random tokens of model.vocab_size (benchmarks, smoke tests)",
    batches=SyntheticIterator,
    tokenizer=lambda config: SyntheticTokenizer(config.model.vocab_size)))
