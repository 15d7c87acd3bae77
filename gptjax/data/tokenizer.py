"""Tokenizers: where a run's tokenizer comes from, and the exact character tokenizer.

`data.tokenizer.kind` is what the tokenizer is, independent of `data.source` (where text comes
from):

    char              one id per character of the corpus (trained on the source's text)
    bpe, unigram      sentencepiece trained on the source's train split (spm.py)
    path              an existing sentencepiece .model (data.tokenizer.path)
    hf                a Hugging Face tokenizer.json (hf_tokenizer.py): the workdir's
                      hf_tokenizer.json, else data.tokenizer.path
    gpt2              GPT-2's byte-level BPE (gpt2_bpe.py): GPT-2's vocab.json + merges.txt
                      from data.tokenizer.path, or one trained on the source's train split

A run's tokenizer is made once, saved in the workdir (`tokenizer.model`, `tokenizer.chars.json`
or `hf_tokenizer.json`) and from then on loaded from there, so train, eval, sample and resumed
runs all see the same ids. Loading needs neither TensorFlow nor the corpus.

Why a separate character tokenizer: sentencepiece always reserves an `<unk>` id and rewrites
spaces as `▁`, so a sentencepiece char model of tiny_shakespeare has 66+ symbols, not nanoGPT's
65. `CharTokenizer` maps each character of the corpus to one id (sorted, as nanoGPT does) and
adds an `<eos>` id only when the corpus has more than one document to separate.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

from gptjax.data import gpt2_bpe, registry
from gptjax.data.hf_tokenizer import FILE as HF_FILE
from gptjax.data.hf_tokenizer import HFTokenizer
from gptjax.data.spm import FILE as SPM_FILE
from gptjax.data.spm import SentencePieceTokenizer, train_sentencepiece
from gptjax.data.store import cache_root
from gptjax.data.synthetic import SyntheticTokenizer
from gptjax.errors import UserError
from gptjax.storage import integrity, paths

KINDS = ("char", "bpe", "unigram", "path", "hf", "gpt2")
CHAR_FILE = "tokenizer.chars.json"  # not HF's tokenizer.json
TOKENIZER_FILES = (SPM_FILE, CHAR_FILE, HF_FILE)   # what load_tokenizer looks for, in order


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class CharTokenizer:
    """One id per character; `<eos>` (last id) only when documents need separating."""

    kind = "char"

    def __init__(self, chars: list[str], eos: bool):
        self.chars = list(chars)
        self.has_eos = bool(eos)
        self.vocab_size = len(self.chars) + int(self.has_eos)
        self.eos_id = len(self.chars) if self.has_eos else None
        self.bos_id = None
        self.pad_id = None
        self._index = {c: i for i, c in enumerate(self.chars)}
        cps = np.array([ord(c) for c in self.chars], np.int64)
        self._order = np.argsort(cps)
        self._sorted = cps[self._order]
        self.fingerprint = _sha(self.to_bytes())

    @classmethod
    def train(cls, splits, eos: bool) -> CharTokenizer:
        """`splits`: iterables of documents; `<eos>` if any split has several documents."""
        chars: set[str] = set()
        most_docs = 0
        for texts in splits:
            docs = 0
            for text in texts:
                chars.update(text)
                docs += 1
            most_docs = max(most_docs, docs)
        if not chars:
            raise UserError("cannot build a character vocabulary: the corpus is empty")
        return cls(sorted(chars), eos=eos and most_docs > 1)

    def to_bytes(self) -> bytes:
        return json.dumps({"kind": "char", "chars": self.chars, "eos": self.has_eos},
                          ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> CharTokenizer:
        d = json.loads(data)
        if not isinstance(d, dict) or d.get("kind") != "char":
            raise UserError(f"{CHAR_FILE} is not a gptjax character tokenizer")
        return cls(d["chars"], d["eos"])

    @classmethod
    def load(cls, path: str) -> CharTokenizer:
        return cls.from_bytes(paths.read_bytes(path))

    def save(self, directory: str) -> str:
        path = paths.join(directory, CHAR_FILE)
        paths.write_bytes(path, self.to_bytes())
        return path

    def encode_array(self, text: str) -> np.ndarray:
        cps = np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int64)
        pos = np.searchsorted(self._sorted, cps)
        pos = np.minimum(pos, len(self._sorted) - 1)
        bad = self._sorted[pos] != cps
        if bad.any():
            unknown = sorted({chr(c) for c in cps[bad]})[:10]
            raise UserError(f"text has characters outside the char vocabulary: {unknown!r} "
                            "(the vocabulary is built from the training corpus)")
        return self._order[pos].astype(np.int32)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode_array(t) for t in texts]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in map(int, ids) if i < len(self.chars))


_LOAD = {SPM_FILE: SentencePieceTokenizer.load, CHAR_FILE: CharTokenizer.load,
         HF_FILE: HFTokenizer.load}


def load_tokenizer(directory: str, kind: str | None = None):
    """The tokenizer saved in a workdir or shards directory, or None if it holds none.

    With `kind` only the files a config of that kind uses count: `hf_tokenizer.json` for hf,
    `tokenizer.model` / `tokenizer.chars.json` for the others.
    """
    files = TOKENIZER_FILES if kind is None else (
        (HF_FILE,) if kind in ("hf", "gpt2") else (SPM_FILE, CHAR_FILE))
    for name in files:
        path = paths.join(directory, name)
        if paths.isfile(path):
            integrity.verify(directory, f"workdir {directory}", names=[name])  # if listed
            try:
                return _LOAD[name](path)
            except UserError:
                raise
            except (ValueError, RuntimeError, KeyError, TypeError, OSError) as e:
                raise UserError(f"{path} is not a readable tokenizer ({type(e).__name__}: "
                                f"{paths.first_line(e)})") from None
    return None


def save_checked(tok, directory: str) -> None:
    """Saves `tok` in `directory` and lists its file in the directory's manifest."""
    saved = tok.save(directory)
    if saved:  # (the synthetic stand-in has no file)
        integrity.update_manifest(directory, [paths.name(saved)])


def tokenizer_cache_key(config) -> str:
    """Identifies a trained tokenizer by its source and settings (for runs without a workdir)."""
    t = config.data.tokenizer
    spec = {"source": registry.source_key(config, config.data.train_split), "kind": t.kind,
            "vocab_size": t.vocab_size, "byte_fallback": t.byte_fallback, "add_eos": t.add_eos,
            "specials": t.user_defined_symbols, "sentences": t.train_sentences}
    if t.kind == "char":
        spec["eval"] = registry.source_key(config, config.data.eval_split)
    return _sha(json.dumps(spec, sort_keys=True).encode())


def _check_kind(tok, kind: str, where: str) -> None:
    is_char = isinstance(tok, CharTokenizer)
    if kind == "char" and not is_char or kind in ("bpe", "unigram") and is_char:
        raise UserError(f"{where} holds a {tok.kind} tokenizer but data.tokenizer.kind={kind!r}; "
                        "use a new workdir (or delete the tokenizer file there)")


def make_tokenizer(config, workdir: str | None = None):
    """The run's tokenizer, from the first of:

    1. the one saved in `workdir` (of data.tokenizer.kind: see load_tokenizer);
    2. the one the source carries (`Source.tokenizer`: shards the exported one, synthetic a
       stand-in of model.vocab_size);
    3. kind=path / hf: the file data.tokenizer.path;
    4. kind=char / bpe / unigram: trained on the source's text (without a workdir, cached under
       the data cache directory by source and settings).
    It is then saved in `workdir`, so every later call loads the same one.
    """
    t = config.data.tokenizer
    if t.kind not in KINDS:
        raise UserError(f"data.tokenizer.kind={t.kind!r}: choose one of {', '.join(KINDS)}")
    if workdir:   # needs no source: sample / eval load a run's tokenizer from here
        tok = load_tokenizer(workdir, t.kind)
        if tok is not None:
            _check_kind(tok, t.kind, f"workdir {workdir}")
            return _remember(tok, workdir)
    source = registry.of(config)
    tok = source.tokenizer(config) if source.tokenizer is not None else None
    if tok is None:
        from_file = t.kind in ("path", "hf") or (t.kind == "gpt2" and t.path)
        tok = _from_file(t) if from_file else _trained(config, source, workdir)
    if workdir:
        save_checked(tok, workdir)
    return _remember(tok, workdir)


def _remember(tok, workdir):
    tok.workdir = workdir  # lets make_train_iter put its token cache beside the run
    return tok


def _from_file(t):
    if not t.path:
        what = "FILE.model" if t.kind == "path" else f"tokenizer.json (or {HF_FILE} in the workdir)"
        raise UserError(f"data.tokenizer.kind={t.kind} needs data.tokenizer.path={what}")
    load = {"path": SentencePieceTokenizer.load, "gpt2": gpt2_bpe.load}.get(t.kind,
                                                                          HFTokenizer.load)
    return load(os.path.expanduser(t.path))


def _trained(config, source, workdir):
    if not source.trains_tokenizer:
        raise UserError(f"data.source={source.name} has no text to train a "
                        f"data.tokenizer.kind={config.data.tokenizer.kind} tokenizer on; use "
                        "kind=path or hf")
    cache = None if workdir else paths.join(cache_root(config, None), "tokenizers",
                                            tokenizer_cache_key(config))
    tok = load_tokenizer(cache) if cache else None
    if tok is None:
        tok = _train(config, source)
        print(f"gptjax: trained a {tok.kind} tokenizer of {tok.vocab_size} tokens",
              file=sys.stderr, flush=True)
        if cache:
            tok.save(cache)
    return tok


def _train(config, source):
    d, t = config.data, config.data.tokenizer
    if t.kind == "char":
        # nanoGPT builds the character set from the whole text; train + eval splits here.
        splits = [d.train_split] + ([d.eval_split] if d.eval_split else [])
        return CharTokenizer.train((source.read(config, s) for s in splits), eos=t.add_eos)
    if t.kind == "gpt2":
        return gpt2_bpe.train(source.read(config, d.train_split), int(t.vocab_size))
    return train_sentencepiece(source.read(config, d.train_split), t)


# What make_tokenizer gives.
Tokenizer = CharTokenizer | SentencePieceTokenizer | HFTokenizer | SyntheticTokenizer


def prefix_id(tokenizer) -> int:
    """What a text without context is conditioned on: EOS (GPT-2's <|endoftext|>), else BOS,
    else a newline (a character model of one document has neither)."""
    for i in (tokenizer.eos_id, getattr(tokenizer, "bos_id", None)):
        if i is not None:
            return int(i)
    ids = tokenizer.encode("\n")
    return int(ids[-1]) if ids else 0
