"""Tokenized splits on disk: each split a directory of token shards, readable with numpy alone.

Layout of a store directory (the token cache and `gptjax data export` write the same):

    index.json              {"format", "dtype", "vocab_size", "eos_id", "tokenizer", "source"}
    <split>/part-00000-of-00004-shard-00000.bin   raw little-endian uint16 (vocab <= 65536) or
            ...                                   uint32 tokens, data.shard_tokens per shard
    <split>/part-00000-of-00004-shard-00000.json  that shard: tokens, documents, crc32c, where
                                                  its part's next shard starts (resume)
    <split>/part-00000-of-00004.json  written when part 0 of 4 is complete
    <split>/index.json      written last, once every part is there: per shard its file,
                            tokens, documents and CRC32C; the tokenizer fingerprint; the source
    tokenizer.model | tokenizer.chars.json | hf_tokenizer.json   (exported stores: the
                            tokenizer that made the ids)

The split's token stream is its shards in the index's order (parts in order, each part's
shards in order): doc0 EOS doc1 EOS ... (EOS when the tokenizer has one and
data.tokenizer.add_eos), exactly what one process tokenizing every document in order makes.
Part i of n holds a contiguous block of the split's documents (`registry.Source.read_part`),
so n workers -- the processes of a training job, or `gptjax data export --worker I
--num-workers N` jobs -- prepare a split together; a killed worker resumes after its last
finished shard. Every file is written once under its final name (one upload on a bucket, a
rename locally), so nothing half-written is ever visible.

Reading (`tokens`) checks every shard of the index (present, its size, its CRC32C: on a bucket
the object's own, locally by reading it when data.verify_shards) and returns a
`storage.ranged.FlatArray`: windows read in place, by memory map or by ranged reads.

For a config: `token_store` (the source's store: its cache directory, or a `shards` export),
`split_tokens` (a split, tokenized first if missing), `prepare_part` / `prepare_splits` (one
worker's part).

A store written before shards (`<split>.bin` + `<split>.meta.json`) is still read as one file.
The directory may be any `gptjax.storage.paths` path, `gs://` included.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time

import numpy as np

from gptjax.data import registry
from gptjax.errors import UserError
from gptjax.storage import integrity, paths, ranged

FORMAT = "gptjax-tokens/1"
SPLIT_FORMAT = "gptjax-shards/1"
INDEX = "index.json"
META = ".meta.json"          # a single-file split (stores written before shards)
ENCODE_BATCH = (4096, 1 << 22)   # documents, characters per encode_many call


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


def part_name(worker: int, num_workers: int) -> str:
    return f"part-{worker:05d}-of-{num_workers:05d}"


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def _write_json(path: str, obj) -> None:
    paths.write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def _read_json(path: str):
    return json.loads(paths.read_text(path))


def check_workers(worker: int, num_workers: int) -> None:
    if num_workers < 1 or not 0 <= worker < num_workers:
        raise UserError(f"--worker {worker} --num-workers {num_workers}: the worker must be in "
                        f"[0, {max(num_workers, 1)})")


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

    def split_dir(self, split: str) -> str:
        return paths.join(self.directory, split_file(split))

    def splits(self) -> list[str]:
        out = []
        for name in paths.listdir(self.directory):
            if name.endswith(META) and ".tmp-" not in name:
                out.append(_read_json(paths.join(self.directory, name))["split"])
            elif paths.isfile(paths.join(self.directory, name, INDEX)):
                out.append(_read_json(paths.join(self.directory, name, INDEX))["split"])
        return out

    def meta(self, split: str) -> dict | None:
        """The split's index (num_tokens, num_documents, shards), or a single-file split's
        meta, or None."""
        for path in (paths.join(self.split_dir(split), INDEX),
                     paths.join(self.directory, split_file(split) + META)):
            if paths.isfile(path):
                return _read_json(path)
        return None

    def has(self, split: str) -> bool:
        return self.meta(split) is not None

    def tokens(self, split: str, verify: bool = True):
        """The split's tokens, read in place (nothing is loaded until indexed): a
        `ranged.FlatArray` over its shards, checked first; a single-file split's memmap."""
        meta = self.meta(split)
        if meta is None:
            raise UserError(f"token store {self.directory!r} has no split {split!r}; it has "
                            f"{', '.join(self.splits()) or 'none'}")
        if "shards" not in meta:
            return self._single_file(meta)
        d = self.split_dir(split)
        files = ranged.listing(d)
        for shard in meta["shards"]:
            self._check(d, shard, files.get(shard["file"]), verify)
        return ranged.FlatArray([(paths.join(d, s["file"]), s["tokens"]) for s in meta["shards"]],
                                self.dtype)

    def _check(self, d: str, shard: dict, found: dict | None, verify: bool) -> None:
        path = paths.join(d, shard["file"])
        again = f"delete {d} to prepare the split again"
        if found is None:
            raise UserError(f"token shard {path} is missing (its split's {INDEX} lists it); "
                            f"{again}")
        want = int(shard["tokens"]) * self.dtype.itemsize
        if found["size"] != want:
            raise UserError(f"token shard {path} has {found['size']} bytes, expected {want} "
                            f"(truncated?); {again}")
        have = found["crc32c"]
        if have is None and verify:
            have = integrity.file_checksum(path)
        if have is not None and have != shard["crc32c"]:
            raise UserError(f"token shard {path} has checksum {have}, its {INDEX} says "
                            f"{shard['crc32c']} (corrupted?); {again}")

    def _single_file(self, meta: dict) -> np.ndarray:
        path = paths.local_copy(paths.join(self.directory, meta["file"]))  # a bucket: download
        n = int(meta["num_tokens"])
        if os.path.getsize(path) != n * self.dtype.itemsize:
            raise UserError(f"{path} has {os.path.getsize(path)} bytes, expected "
                            f"{n * self.dtype.itemsize}; delete the directory to rebuild it")
        return np.memmap(path, dtype=self.dtype, mode="r", shape=(n,))

    # -- writing
    def write_split(self, split: str, tok, docs, add_eos: bool, what: str,
                    shard_tokens: int = 1 << 27) -> dict:
        """Tokenizes `docs` (an iterable of str) as the split's only part, and indexes it."""
        self.write_part(split, tok, docs, add_eos, what, 0, 1, shard_tokens)
        return self.finish_split(split, what, num_workers=1)

    def write_part(self, split: str, tok, docs, add_eos: bool, what: str, worker: int = 0,
                   num_workers: int = 1, shard_tokens: int = 1 << 27) -> dict:
        """Tokenizes `docs` -- part `worker` of `num_workers` of the split's documents -- into
        shards of `shard_tokens`, after the shards of this part already written. -> the part."""
        check_workers(worker, num_workers)
        if shard_tokens < 1:
            raise UserError(f"data.shard_tokens={shard_tokens} must be >= 1")
        d = self.split_dir(split)
        paths.makedirs(d)
        part = part_name(worker, num_workers)
        marker = paths.join(d, part + ".json")
        if paths.isfile(marker):
            return _read_json(marker)
        start = time.time()
        writer = _PartWriter(d, part, self.dtype, shard_tokens, ranged.listing(d))
        skip_docs, skip_tokens = writer.resume
        eos = tok.eos_id if add_eos else None
        batch: list[str] = []
        n_docs = chars = 0
        first = skip_docs
        for i, text in enumerate(docs):
            n_docs = i + 1
            if i < skip_docs:          # in a shard written before: not tokenized again
                continue
            batch.append(text)
            chars += len(text)
            if len(batch) >= ENCODE_BATCH[0] or chars >= ENCODE_BATCH[1]:
                writer.add(_encode(tok, batch, eos, self.dtype), first, skip_tokens)
                first, skip_tokens, chars = first + len(batch), 0, 0
                batch = []
        if batch:
            writer.add(_encode(tok, batch, eos, self.dtype), first, skip_tokens)
        shards = writer.close()
        info = {"split": split, "part": worker, "num_workers": num_workers,
                "num_documents": n_docs, "num_tokens": sum(s["tokens"] for s in shards),
                "shards": shards}
        _write_json(marker, info)
        print(f"gptjax: tokenized {what} split {split!r} part {worker + 1}/{num_workers}: "
              f"{n_docs} documents, {info['num_tokens']} tokens in {len(shards)} shards in "
              f"{time.time() - start:.1f}s -> {d}", file=sys.stderr)
        return info

    def finish_split(self, split: str, what: str = "", num_workers: int | None = None):
        """Writes the split's index once every part of one preparation is there (any number of
        workers, or `num_workers`) -> the index, or None while parts are missing."""
        d = self.split_dir(split)
        done = {}
        for name in ranged.listing(d):
            m = re.fullmatch(r"part-(\d{5})-of-(\d{5})\.json", name)
            if m:
                done.setdefault(int(m[2]), set()).add(int(m[1]))
        counts = [n for n, have in sorted(done.items()) if len(have) == n
                  and (num_workers is None or n == num_workers)]
        if not counts:
            return None
        n = counts[0]
        parts = [_read_json(paths.join(d, part_name(i, n) + ".json")) for i in range(n)]
        index = {"format": SPLIT_FORMAT, "split": split, "num_workers": n,
                 "num_tokens": sum(p["num_tokens"] for p in parts),
                 "num_documents": sum(p["num_documents"] for p in parts),
                 "shards": [s for p in parts for s in p["shards"]],
                 "tokenizer": self.index["tokenizer"], "source": self.index["source"]}
        if index["num_tokens"] == 0:
            raise UserError(f"{what or self.directory}: split {split!r} has no text to tokenize")
        _write_json(paths.join(d, INDEX), index)
        return index


# ----------------------------------------------------------------------------- a config's stores

def token_store(config, tok, workdir: str | None = None) -> TokenStore:
    """The store holding this source's tokens for this tokenizer (created empty if new)."""
    d = config.data
    source = registry.of(config)
    if source.store_dir is not None:
        store = TokenStore(source.store_dir(config))
        if store.index.get("tokenizer") != tok.fingerprint:
            raise UserError(f"{source.what(config)} was tokenized with another tokenizer than "
                            "this run's; use a new workdir or re-export")
        return store
    key = source.key(config)      # raises for a source without text
    spec = {"source": key, "tokenizer": tok.fingerprint, "add_eos": bool(d.tokenizer.add_eos)}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    root = cache_root(config, workdir or getattr(tok, "workdir", None))
    return TokenStore.create(paths.join(root, "tokens", f"{source.cache_name(config)}-{digest}"),
                             tok, key)


def split_tokens(config, tok, split: str, workdir: str | None = None):
    """Tokens of one split, read in place (`storage.ranged.FlatArray`, or a single-file
    store's memmap), tokenizing the split first if it is not in the store."""
    store = token_store(config, tok, workdir)
    source = registry.of(config)
    if not store.has(split) and source.documents is not None \
            and store.finish_split(split, source.what(config)) is None:
        prepare_part(config, tok, split, workdir, 0, 1)
        store.finish_split(split, source.what(config), num_workers=1)
    # a missing split of a ready store: names the splits it has
    return store.tokens(split, verify=bool(config.data.verify_shards))


def prepare_part(config, tok, split: str, workdir: str | None = None, worker: int = 0,
                 num_workers: int = 1, store: TokenStore | None = None) -> dict | None:
    """Tokenizes part `worker` of `num_workers` of a split into the store (nothing when the
    split is there already or its source has no text) -> the part, or None."""
    source = registry.of(config)
    if source.documents is None:
        return None
    store = store or token_store(config, tok, workdir)
    if store.has(split):
        return None
    docs = source.read_part(config, split, worker, num_workers)
    return store.write_part(split, tok, docs, bool(config.data.tokenizer.add_eos),
                            source.what(config), worker, num_workers,
                            int(config.data.shard_tokens))


def prepare_splits(config, tok, workdir: str | None, worker: int, num_workers: int) -> None:
    """Part `worker` of `num_workers` of the train and eval splits: what each process of a
    training job tokenizes before the others' parts are there (gptjax/training/recipes.py)."""
    splits = [config.data.train_split]
    if config.data.eval_split and config.train.eval_every >= 0:
        splits.append(config.data.eval_split)
    for split in dict.fromkeys(splits):
        prepare_part(config, tok, split, workdir, worker, num_workers)


def _encode(tok, batch: list[str], eos, dtype) -> list[np.ndarray]:
    """Each document's tokens (+ EOS) as one array of `dtype`."""
    out = []
    for ids in tok.encode_many(batch):
        ids = np.asarray(ids)
        if ids.size and int(ids.max()) >= tok.vocab_size:
            raise UserError(f"tokenizer produced id {int(ids.max())} >= its vocabulary")
        if eos is not None:
            ids = np.append(ids, eos)
        out.append(ids.astype(dtype))
    return out


class _PartWriter:
    """Cuts one part's stream of documents into shards of exactly `shard_tokens` (the last one
    shorter); each shard's .json says where the next shard starts, (document, token), so a
    killed part resumes after its last complete shard."""

    def __init__(self, d: str, part: str, dtype, shard_tokens: int, files: dict):
        self.d, self.part, self.dtype, self.size = d, part, dtype, shard_tokens
        self.shards: list[dict] = []
        while (name := self._name(len(self.shards))) + ".json" in files:
            shard = _read_json(paths.join(d, name + ".json"))
            if files.get(name + ".bin", {}).get("size") != shard["tokens"] * dtype.itemsize:
                break                  # the .bin went missing: write it (and the rest) again
            self.shards.append(shard)
        self.resume = tuple(self.shards[-1]["next"]) if self.shards else (0, 0)
        self.pending: list[tuple[int, int, np.ndarray]] = []   # (document, offset, tokens)
        self.buffered = 0

    def _name(self, k: int) -> str:
        return f"{self.part}-shard-{k:05d}"

    def add(self, docs: list[np.ndarray], first: int, skip: int) -> None:
        """Documents first, first+1, ...; the first `skip` tokens of the first are written."""
        for j, ids in enumerate(docs):
            offset = skip if j == 0 else 0
            self.pending.append((first + j, offset, ids[offset:]))
            self.buffered += ids.size - offset
            while self.buffered >= self.size:
                self._write(self.size)

    def close(self) -> list[dict]:
        if self.buffered:
            self._write(self.buffered)
        return self.shards

    def _write(self, n: int) -> None:
        out, taken, documents, last = [], 0, 0, -1
        while self.pending and (taken < n or self.pending[0][2].size == 0):
            doc, offset, ids = self.pending[0]
            k = min(n - taken, ids.size)
            out.append(ids[:k])
            taken += k
            if k == ids.size:          # the document ends in this shard
                self.pending.pop(0)
                documents, last = documents + 1, doc
            else:
                self.pending[0] = (doc, offset + k, ids[k:])
        nxt = list(self.pending[0][:2]) if self.pending else [last + 1, 0]
        self.buffered -= n
        data = np.concatenate(out).astype(self.dtype, copy=False).tobytes()
        name = self._name(len(self.shards))
        shard = {"file": name + ".bin", "tokens": n, "documents": documents,
                 "crc32c": integrity.checksum(data), "next": [int(x) for x in nxt]}
        paths.write_bytes(paths.join(self.d, name + ".bin"), data)
        _write_json(paths.join(self.d, name + ".json"), shard)
        self.shards.append(shard)
