"""Tokenizers: sentencepiece (BPE / unigram / an existing .model) and an exact character map.

A run's tokenizer is trained once, saved in the workdir (`tokenizer.model` for sentencepiece,
`tokenizer.chars.json` for characters) and from then on loaded from there, so train, eval,
sample and resumed runs all see the same ids. Loading needs neither TensorFlow nor the corpus.

Why a separate character tokenizer: sentencepiece always reserves an `<unk>` id and rewrites
spaces as `▁`, so a sentencepiece char model of tiny_shakespeare has 66+ symbols, not nanoGPT's
65. `CharTokenizer` maps each character of the corpus to one id (sorted, as nanoGPT does) and
adds an `<eos>` id only when the corpus has more than one document to separate.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys

import numpy as np

from gptjax import paths
from gptjax.errors import UserError

SPM_FILE = "tokenizer.model"
CHAR_FILE = "tokenizer.chars.json"  # not HF's tokenizer.json
EOS_PIECE = "<eos>"


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


class SentencePieceTokenizer:
    """A sentencepiece model held in memory (serialized proto), with batched parallel encoding."""

    def __init__(self, model_bytes: bytes):
        import sentencepiece as spm
        self.kind = _model_type(model_bytes)
        self.model_bytes = model_bytes
        self.sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        self.vocab_size = int(self.sp.get_piece_size())
        self.eos_id = _opt_id(self.sp.eos_id())
        self.bos_id = _opt_id(self.sp.bos_id())
        self.pad_id = _opt_id(self.sp.pad_id())
        self.fingerprint = _sha(model_bytes)
        self.splittable = _newline_splittable(model_bytes)

    @classmethod
    def load(cls, path: str) -> SentencePieceTokenizer:
        if not paths.isfile(path):
            raise UserError(f"tokenizer file {path!r} does not exist")
        data = paths.read_bytes(path)
        try:
            return cls(data)
        except RuntimeError as e:
            raise UserError(f"{path!r} is not a sentencepiece model ({_first_line(e)})") from None

    def save(self, directory: str) -> str:
        path = paths.join(directory, SPM_FILE)
        paths.write_bytes(path, self.model_bytes)
        return path

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """Encodes in sentencepiece's C++ threads; long texts split at newlines when exact."""
        pieces, owners = [], []
        for i, text in enumerate(texts):
            parts = _split_lines(text, 1 << 16) if self.splittable else [text]
            pieces.extend(parts)
            owners.extend([i] * len(parts))
        out = self.sp.encode(pieces, num_threads=os.cpu_count() or 1)
        result: list[list[np.ndarray]] = [[] for _ in texts]
        for i, ids in zip(owners, out, strict=True):
            result[i].append(np.asarray(ids, np.int32))
        return [np.concatenate(r) if r else np.zeros(0, np.int32) for r in result]

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])


class SyntheticTokenizer:
    """Stand-in for `source=synthetic`: a vocabulary size and nothing to learn."""

    kind = "synthetic"

    def __init__(self, vocab_size: int):
        self.vocab_size = int(vocab_size)
        self.eos_id = 0
        self.bos_id = self.pad_id = None
        self.fingerprint = f"synthetic-{vocab_size}"

    def encode(self, text: str) -> list[int]:
        return [b % self.vocab_size for b in text.encode()]

    def encode_many(self, texts):
        return [np.asarray(self.encode(t), np.int32) for t in texts]

    def decode(self, ids) -> str:
        return "".join(chr(32 + int(i) % 95) for i in ids)

    def save(self, directory: str) -> str | None:
        return None


def _opt_id(i: int) -> int | None:
    return None if i < 0 else int(i)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def _split_lines(text: str, size: int) -> list[str]:
    """Cuts text after newlines into pieces of about `size` characters (joined back = text)."""
    if len(text) <= size:
        return [text]
    parts, start = [], 0
    while start < len(text):
        end = start + size
        if end >= len(text):
            parts.append(text[start:])
            break
        cut = text.rfind("\n", start, end)
        cut = end if cut < start else cut + 1
        parts.append(text[start:cut])
        start = cut
    return parts


def _model_type(model_bytes: bytes) -> str:
    """'bpe' / 'unigram' / 'char' / 'word' from the model's trainer spec."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
        proto = pb.ModelProto()
        proto.ParseFromString(model_bytes)
        return pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()
    except Exception:  # noqa: BLE001 - an odd proto still loads; just call it sentencepiece
        return "sentencepiece"


def _newline_splittable(model_bytes: bytes) -> bool:
    """True when encoding text cut after '\\n' gives the same ids as encoding it whole.

    That holds for models gptjax trains (no dummy prefix, '\\n' a user-defined piece), which lets
    one huge document be encoded in parallel pieces.
    """
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
        proto = pb.ModelProto()
        proto.ParseFromString(model_bytes)
    except Exception:  # noqa: BLE001 - any trouble: play safe and do not split
        return False
    if proto.normalizer_spec.add_dummy_prefix:
        return False
    return any(p.piece == "\n" and p.type == pb.ModelProto.SentencePiece.USER_DEFINED
               for p in proto.pieces)


def _training_sentences(texts, limit: int, max_chars: int = 2000):
    """Documents -> pieces of whole lines (sentencepiece skips inputs over 4192 bytes)."""
    count = 0
    for text in texts:
        for part in _split_lines(text, max_chars):
            for j in range(0, len(part), max_chars):
                piece = part[j:j + max_chars]
                if piece.strip():
                    yield piece
                    count += 1
                    if count >= limit:
                        return


def train_sentencepiece(texts, tcfg) -> SentencePieceTokenizer:
    """Trains a BPE / unigram model; '\\n' is kept as its own piece so text round-trips."""
    import sentencepiece as spm
    kind = tcfg.kind
    specials = [s for s in (x.strip() for x in tcfg.user_defined_symbols.split(",")) if s]
    out = io.BytesIO()
    sentences = _training_sentences(texts, max(1, int(tcfg.train_sentences)))
    first = next(sentences, None)
    if first is None:
        raise UserError("cannot train a tokenizer: the training split has no text")

    def chain():
        yield first
        yield from sentences

    spm.set_random_generator_seed(0)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=chain(), model_writer=out, model_type=kind,
            vocab_size=int(tcfg.vocab_size), character_coverage=1.0,
            byte_fallback=bool(tcfg.byte_fallback), unk_id=0, bos_id=1, eos_id=2, pad_id=3,
            user_defined_symbols=["\n", *specials], normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True, split_digits=True,
            input_sentence_size=int(tcfg.train_sentences), shuffle_input_sentence=True,
            max_sentence_length=1 << 14,  # bytes: our pieces are <= 2000 characters
            num_threads=os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as e:
        msg = str(e)
        m = re.search(r"<= (\d+)", msg)
        if "Vocabulary size" in msg and m:
            raise UserError(
                f"data.tokenizer.vocab_size={tcfg.vocab_size} is more than this corpus supports "
                f"for a {kind} model (at most {m.group(1)}); lower data.tokenizer.vocab_size"
            ) from None
        m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
        if m:
            raise UserError(
                f"data.tokenizer.vocab_size={tcfg.vocab_size} is too small: this corpus's "
                f"characters and the special{' and byte' if tcfg.byte_fallback else ''} pieces "
                f"alone need {m.group(2)}; raise data.tokenizer.vocab_size") from None
        if "vocab_size" in msg or "byte" in msg:
            raise UserError(f"sentencepiece refused data.tokenizer settings: {_first_line(e)} "
                            "(with byte_fallback the vocabulary needs > 260 entries)") from None
        raise UserError(f"sentencepiece training failed: {_first_line(e)}") from None
    return SentencePieceTokenizer(out.getvalue())


def load_tokenizer(directory: str):
    """The tokenizer saved in a workdir or shards directory, or None if it holds none."""
    spm_path = paths.join(directory, SPM_FILE)
    char_path = paths.join(directory, CHAR_FILE)
    if paths.isfile(spm_path):
        return SentencePieceTokenizer.load(spm_path)
    if paths.isfile(char_path):
        return CharTokenizer.from_bytes(paths.read_bytes(char_path))
    return None


def tokenizer_cache_key(config) -> str:
    """Identifies a trained tokenizer by its source and settings (for runs without a workdir)."""
    from gptjax.data import sources
    t = config.data.tokenizer
    spec = {"source": sources.source_key(config, config.data.train_split), "kind": t.kind,
            "vocab_size": t.vocab_size, "byte_fallback": t.byte_fallback, "add_eos": t.add_eos,
            "specials": t.user_defined_symbols, "sentences": t.train_sentences}
    if t.kind == "char":
        spec["eval"] = sources.source_key(config, config.data.eval_split)
    return _sha(json.dumps(spec, sort_keys=True).encode())


def _check_kind(tok, kind: str, where: str) -> None:
    is_char = isinstance(tok, CharTokenizer)
    if kind == "char" and not is_char or kind in ("bpe", "unigram") and is_char:
        raise UserError(f"{where} holds a {tok.kind} tokenizer but data.tokenizer.kind={kind!r}; "
                        "use a new workdir (or delete the tokenizer file there)")


def make_tokenizer(config, workdir: str | None = None):
    """Loads the run's tokenizer from `workdir`, or trains / copies it and saves it there.

    kind=path copies an existing sentencepiece `.model`; source=shards reuses the tokenizer
    saved with the shards; source=synthetic has no text (vocabulary = model.vocab_size).
    Without a workdir the trained tokenizer is cached under the data cache directory.
    """
    from gptjax.data import sources
    d, t = config.data, config.data.tokenizer
    if d.source == "synthetic":
        return SyntheticTokenizer(config.model.vocab_size)
    if t.kind not in ("char", "bpe", "unigram", "path"):
        raise UserError(f"data.tokenizer.kind={t.kind!r}: choose char, bpe, unigram or path")
    if workdir:
        tok = load_tokenizer(workdir)
        if tok is not None:
            _check_kind(tok, t.kind, f"workdir {workdir}")
            return _remember(tok, workdir)
    tok = None
    if d.source == "shards":
        tok = load_tokenizer(sources.shards_dir(config))
        if tok is None:
            raise UserError(f"data.shards_dir={d.shards_dir!r} holds no tokenizer file "
                            f"({SPM_FILE} or {CHAR_FILE}); re-run `gptjax data export`")
    elif t.kind == "path":
        if not t.path:
            raise UserError("data.tokenizer.kind=path needs data.tokenizer.path=FILE.model")
        tok = SentencePieceTokenizer.load(os.path.expanduser(t.path))
    if tok is None:
        cache = None if workdir else paths.join(sources.cache_root(config, None), "tokenizers",
                                                tokenizer_cache_key(config))
        if cache:
            tok = load_tokenizer(cache)
        if tok is None:
            tok = _train(config)
            print(f"gptjax: trained a {tok.kind} tokenizer of {tok.vocab_size} tokens",
                  file=sys.stderr, flush=True)
            if cache:
                tok.save(cache)
    if workdir:
        tok.save(workdir)
    return _remember(tok, workdir)


def _remember(tok, workdir):
    tok.workdir = workdir  # lets make_train_iter put its token cache beside the run
    return tok


def _train(config):
    from gptjax.data import sources
    d, t = config.data, config.data.tokenizer
    if t.kind == "char":
        # nanoGPT builds the character set from the whole text; train + eval splits here.
        splits = [d.train_split] + ([d.eval_split] if d.eval_split else [])
        return CharTokenizer.train((sources.documents(config, s) for s in splits), eos=t.add_eos)
    return train_sentencepiece(sources.documents(config, d.train_split), t)


Tokenizer = CharTokenizer | SentencePieceTokenizer | SyntheticTokenizer  # what make_tokenizer gives
