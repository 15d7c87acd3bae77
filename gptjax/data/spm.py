"""sentencepiece tokenizers: loading a model, parallel encoding, and training BPE / unigram.

Models gptjax trains round-trip text exactly: identity normalization, no dummy prefix, spaces
kept, `\\n` a user-defined piece (sentencepiece would otherwise treat it as unknown), digits split
and byte fallback for anything unseen. Such a model gives the same ids for text cut after a
newline as for the whole text, which lets one huge document be encoded in parallel pieces.
"""

from __future__ import annotations

import hashlib
import io
import os
import re

import numpy as np
import sentencepiece as spm

from gptjax.errors import UserError
from gptjax.storage import paths

try:
    from sentencepiece import sentencepiece_model_pb2 as pb
except Exception:  # noqa: BLE001 - a protobuf mismatch: models still load, unsplit
    pb = None

FILE = "tokenizer.model"


class SentencePieceTokenizer:
    """A sentencepiece model held in memory (serialized proto), with batched parallel encoding."""

    def __init__(self, model_bytes: bytes):
        proto = _proto(model_bytes)
        self.kind = _model_type(proto)
        self.model_bytes = model_bytes
        self.sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        self.vocab_size = int(self.sp.get_piece_size())
        self.eos_id = _opt_id(self.sp.eos_id())
        self.bos_id = _opt_id(self.sp.bos_id())
        self.pad_id = _opt_id(self.sp.pad_id())
        self.fingerprint = hashlib.sha256(model_bytes).hexdigest()[:16]
        self.splittable = _newline_splittable(proto)

    @classmethod
    def load(cls, path: str) -> SentencePieceTokenizer:
        if not paths.isfile(path):
            raise UserError(f"tokenizer file {path!r} does not exist")
        data = paths.read_bytes(path)
        try:
            return cls(data)
        except RuntimeError as e:
            raise UserError(f"{path!r} is not a sentencepiece model ({_last_line(e)})") from None

    def save(self, directory: str) -> str:
        path = paths.join(directory, FILE)
        paths.write_bytes(path, self.model_bytes)
        return path

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """Encodes in sentencepiece's C++ threads; long texts split at newlines when exact."""
        pieces, owners = [], []
        for i, text in enumerate(texts):
            parts = split_lines(text, 1 << 16) if self.splittable else [text]
            pieces.extend(parts)
            owners.extend([i] * len(parts))
        out = self.sp.encode(pieces, num_threads=os.cpu_count() or 1)
        result: list[list[np.ndarray]] = [[] for _ in texts]
        for i, ids in zip(owners, out, strict=True):
            result[i].append(np.asarray(ids, np.int32))
        return [np.concatenate(r) if r else np.zeros(0, np.int32) for r in result]

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])


def _opt_id(i: int) -> int | None:
    return None if i < 0 else int(i)


def _last_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def split_lines(text: str, size: int) -> list[str]:
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


def _proto(model_bytes: bytes):
    """The parsed ModelProto, or None when it cannot be inspected (it may still load)."""
    if pb is None:
        return None
    try:
        proto = pb.ModelProto()
        proto.ParseFromString(model_bytes)
        return proto
    except Exception:  # noqa: BLE001 - an odd proto: play safe
        return None


def _model_type(proto) -> str:
    """'bpe' / 'unigram' / 'char' / 'word' from the model's trainer spec."""
    try:
        return pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()
    except (AttributeError, ValueError):  # no proto, or a type this protobuf does not know
        return "sentencepiece"


def _newline_splittable(proto) -> bool:
    """True when encoding text cut after '\\n' gives the same ids as encoding it whole.

    That holds for models gptjax trains (no dummy prefix, '\\n' a user-defined piece).
    """
    if proto is None or proto.normalizer_spec.add_dummy_prefix:
        return False
    return any(p.piece == "\n" and p.type == pb.ModelProto.SentencePiece.USER_DEFINED
               for p in proto.pieces)


# ----------------------------------------------------------------------------- training

def _training_sentences(texts, limit: int, max_chars: int = 2000):
    """Documents -> pieces of whole lines (sentencepiece skips inputs over 4192 bytes)."""
    count = 0
    for text in texts:
        for part in split_lines(text, max_chars):
            for j in range(0, len(part), max_chars):
                piece = part[j:j + max_chars]
                if piece.strip():
                    yield piece
                    count += 1
                    if count >= limit:
                        return


def _training_error(e: RuntimeError, tcfg) -> UserError:
    """sentencepiece's complaint about data.tokenizer settings, as one actionable line."""
    msg, kind = str(e), tcfg.kind
    m = re.search(r"<= (\d+)", msg)
    if "Vocabulary size" in msg and m:
        return UserError(
            f"data.tokenizer.vocab_size={tcfg.vocab_size} is more than this corpus supports "
            f"for a {kind} model (at most {m.group(1)}); lower data.tokenizer.vocab_size")
    m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
    if m:
        return UserError(
            f"data.tokenizer.vocab_size={tcfg.vocab_size} is too small: this corpus's "
            f"characters and the special{' and byte' if tcfg.byte_fallback else ''} pieces "
            f"alone need {m.group(2)}; raise data.tokenizer.vocab_size")
    if "vocab_size" in msg or "byte" in msg:
        return UserError(f"sentencepiece refused data.tokenizer settings: {_last_line(e)} "
                         "(with byte_fallback the vocabulary needs > 260 entries)")
    return UserError(f"sentencepiece training failed: {_last_line(e)}")


def train_sentencepiece(texts, tcfg) -> SentencePieceTokenizer:
    """Trains a BPE / unigram model; '\\n' is kept as its own piece so text round-trips."""
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
            sentence_iterator=chain(), model_writer=out, model_type=tcfg.kind,
            vocab_size=int(tcfg.vocab_size), character_coverage=1.0,
            byte_fallback=bool(tcfg.byte_fallback), unk_id=0, bos_id=1, eos_id=2, pad_id=3,
            user_defined_symbols=["\n", *specials], normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True, split_digits=True,
            input_sentence_size=int(tcfg.train_sentences), shuffle_input_sentence=True,
            max_sentence_length=1 << 14,  # bytes: our pieces are <= 2000 characters
            num_threads=os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as e:
        raise _training_error(e, tcfg) from None
    return SentencePieceTokenizer(out.getvalue())
