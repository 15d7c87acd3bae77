"""Tokenized splits on disk: one flat token array per split, readable with numpy alone.

Layout of a store directory (the token cache and `gptjax data export` write the same):

    index.json          {"format", "dtype", "vocab_size", "eos_id", "tokenizer", "source"}
    <split>.bin         raw little-endian uint16 (vocab <= 65536) or uint32 tokens
    <split>.meta.json   {"split", "file", "num_tokens", "num_documents"}; written last
    tokenizer.model | tokenizer.chars.json | hf_tokenizer.json   (exported stores: the
                        tokenizer that made the ids)

Every document is followed by the tokenizer's EOS (when it has one and data.tokenizer.add_eos),
so the array is doc0 EOS doc1 EOS ...; training windows run across those boundaries.
Files are written under a temporary name and renamed (on a bucket: uploaded whole, and read
through a local copy), so a crash or several processes building the same store never leave a
half-written split behind. The directory may be any `gptjax.storage.paths` path, `gs://` included.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time

import numpy as np

from gptjax.errors import UserError
from gptjax.storage import paths

FORMAT = "gptjax-tokens/1"
INDEX = "index.json"
META = ".meta.json"


def cache_root(config, workdir: str | None) -> str:
    """Where token stores and tokenizers are cached: data.cache_dir, else WORKDIR/data, else
    ~/.cache/gptjax (any of them may be gs://)."""
    if config.data.cache_dir:
        return paths.resolve(config.data.cache_dir)
    if workdir:
        return paths.join(paths.resolve(workdir), "data")
    return os.path.join(os.path.expanduser("~"), ".cache", "gptjax")


def split_file(split: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", split)
    if safe != split:
        safe += "-" + hashlib.sha256(split.encode()).hexdigest()[:8]
    return safe


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def _write_json(path: str, obj) -> None:
    paths.write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def _read_json(path: str):
    return json.loads(paths.read_text(path))


class TokenStore:
    """A directory of tokenized splits (see the module docstring)."""

    def __init__(self, directory: str):
        self.directory = directory
        path = paths.join(directory, INDEX)
        if not paths.isfile(path):
            raise UserError(f"{directory!r} is not a token store (no {INDEX}); write one with "
                            "`gptjax data export`")
        self.index = _read_json(path)
        if self.index.get("format") != FORMAT:
            raise UserError(f"{path}: unknown format {self.index.get('format')!r} "
                            f"(expected {FORMAT})")
        self.dtype = np.dtype(self.index["dtype"])

    @classmethod
    def create(cls, directory: str, tok, source: dict) -> TokenStore:
        paths.makedirs(directory)
        if not paths.isfile(paths.join(directory, INDEX)):
            _write_json(paths.join(directory, INDEX), {
                "format": FORMAT, "dtype": np.dtype(token_dtype(tok.vocab_size)).name,
                "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                "tokenizer": tok.fingerprint, "tokenizer_kind": tok.kind, "source": source})
        return cls(directory)

    @property
    def vocab_size(self) -> int:
        return int(self.index["vocab_size"])

    def splits(self) -> list[str]:
        out = []
        for name in paths.listdir(self.directory):
            if name.endswith(META) and ".tmp-" not in name:
                out.append(_read_json(paths.join(self.directory, name))["split"])
        return out

    def meta(self, split: str) -> dict | None:
        path = paths.join(self.directory, split_file(split) + META)
        if not paths.isfile(path):
            return None
        return _read_json(path)

    def has(self, split: str) -> bool:
        return self.meta(split) is not None

    def tokens(self, split: str) -> np.ndarray:
        """The split's tokens as a read-only memmap (nothing is loaded until indexed)."""
        meta = self.meta(split)
        if meta is None:
            raise UserError(f"token store {self.directory!r} has no split {split!r}; it has "
                            f"{', '.join(self.splits()) or 'none'}")
        path = paths.local_copy(paths.join(self.directory, meta["file"]))  # a bucket: download
        n = int(meta["num_tokens"])
        if os.path.getsize(path) != n * self.dtype.itemsize:
            raise UserError(f"{path} has {os.path.getsize(path)} bytes, expected "
                            f"{n * self.dtype.itemsize}; delete the directory to rebuild it")
        return np.memmap(path, dtype=self.dtype, mode="r", shape=(n,))

    def write_split(self, split: str, tok, docs, add_eos: bool, what: str) -> dict:
        """Tokenizes `docs` (an iterable of str) into <split>.bin, in parallel batches."""
        name = split_file(split)
        final = paths.join(self.directory, name + ".bin")
        tmp = paths.local_tmp(final)
        eos = tok.eos_id if add_eos else None
        eos_arr = np.array([eos], self.dtype) if eos is not None else None
        n_tokens = n_docs = 0
        start = time.time()
        batch: list[str] = []
        chars = 0

        def flush(f):
            nonlocal n_tokens
            for ids in tok.encode_many(batch):
                if ids.size and int(ids.max()) >= tok.vocab_size:
                    raise UserError(f"tokenizer produced id {int(ids.max())} >= its vocabulary")
                f.write(ids.astype(self.dtype).tobytes())
                n_tokens += ids.size
                if eos_arr is not None:
                    f.write(eos_arr.tobytes())
                    n_tokens += 1
            batch.clear()

        try:
            with open(tmp, "wb") as f:
                for text in docs:
                    batch.append(text)
                    n_docs += 1
                    chars += len(text)
                    if chars >= 1 << 22 or len(batch) >= 4096:
                        flush(f)
                        chars = 0
                if batch:
                    flush(f)
            if n_tokens == 0:
                raise UserError(f"{what}: split {split!r} has no text to tokenize")
            paths.commit(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        meta = {"split": split, "file": name + ".bin", "num_tokens": n_tokens,
                "num_documents": n_docs}
        _write_json(paths.join(self.directory, name + META), meta)
        print(f"gptjax: tokenized {what} split {split!r}: {n_docs} documents, {n_tokens} tokens "
              f"in {time.time() - start:.1f}s -> {final}", file=sys.stderr)
        return meta
