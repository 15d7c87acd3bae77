"""Hugging Face tokenizer files, both ways.

Reading: a `tokenizer.json` as a gptjax tokenizer (data.tokenizer.kind=hf). It is saved in the
workdir as `hf_tokenizer.json` (not to be confused with the char tokenizer's
`tokenizer.chars.json`); `gptjax convert import` puts GPT-2's there.

Writing (`gptjax convert export`):

    export(tokenizer, directory, max_len)   -> tokenizer.json + tokenizer_config.json

which `transformers.AutoTokenizer.from_pretrained(directory)` loads as a fast tokenizer giving
the same ids and text as gptjax's:

    hf, gpt2          the tokenizer.json itself
    char              a `tokenizers` BPE with one token per character and no merges (Fuse decoder);
                      its `<eos>` id, if any, is the special token <|endoftext|>
    bpe, unigram,     the sentencepiece model rebuilt in `tokenizers`: Unigram with its scores,
    path              or BPE with the merges its piece order implies; its normalizer settings
                      (charsmap, extra whitespace, dummy prefix, escaped spaces), split digits,
                      user-defined pieces (gptjax's '\\n') and byte fallback

A sentencepiece model is checked after conversion: its own pieces and a mixed-script probe must
encode to the same ids, else the export is refused (a model using a sentencepiece feature the
conversion lacks). It needs no transformers. Why not transformers' own slow-to-fast
converters: they are per model family (Llama's, T5's, ...), each fixing settings gptjax's
models do not share (dummy prefix, whitespace handling). Reading and writing both need
the `tokenizers` package (the `gptjax[interop]` extra).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from gptjax.data.spm import SentencePieceTokenizer, pb
from gptjax.errors import UserError
from gptjax.storage import paths

try:
    import tokenizers
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
except ImportError:  # optional: only kind=hf and exporting need it
    tokenizers = None

FILE = "hf_tokenizer.json"
EOS_TOKEN = "<|endoftext|>"


class HFTokenizer:
    """GPT-2's byte-level BPE (or any `tokenizers` model) read from a tokenizer.json file."""

    kind = "hf"
    FILE = FILE

    def __init__(self, path: str):
        if tokenizers is None:
            raise UserError("a Hugging Face tokenizer needs `pip install tokenizers` "
                            "(or 'gptjax[interop]')")
        self.path = path
        self.data = paths.read_bytes(path)
        try:
            self.tok = tokenizers.Tokenizer.from_str(self.data.decode("utf-8"))
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exceptions
            raise UserError(f"{path!r} is not a Hugging Face tokenizer.json ({e})") from None
        self.vocab_size = self.tok.get_vocab_size()
        self.eos_id = self.tok.token_to_id(EOS_TOKEN)
        self.bos_id = self.pad_id = None
        self.fingerprint = hashlib.sha256(self.data).hexdigest()[:16]

    @classmethod
    def load(cls, path: str) -> HFTokenizer:
        if not paths.isfile(path):
            raise UserError(f"tokenizer file {path!r} does not exist")
        return cls(path)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        out = self.tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in out]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: str) -> str:
        path = paths.join(directory, FILE)
        if paths.is_url(path) or paths.resolve(path) != paths.resolve(self.path):
            paths.write_bytes(path, self.data)
        return path


# ----------------------------------------------------------------------------- export

EXPORT_FILES = ("tokenizer.json", "tokenizer_config.json")
SPACE = "\u2581"  # sentencepiece's escaped space
_PROBE = "The quick brown fox, 1234 r\u00e9sum\u00e9 \u65e5\u672c  two  spaces\t\n\nend "


def export(tok, directory: str, max_len: int | None = None) -> bool:
    """Writes `tok` as tokenizer.json + tokenizer_config.json in `directory` -> False when the
    tokenizer is the synthetic stand-in (ids only: nothing to write)."""
    if tok.kind == "synthetic":
        return False
    if tokenizers is None:
        raise UserError("exporting a tokenizer needs `pip install tokenizers` "
                        "(or 'gptjax[interop]')")
    hf, eos = convert(tok)
    os.makedirs(directory, exist_ok=True)
    hf.save(os.path.join(directory, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "add_bos_token": False, "add_eos_token": False}
    if eos is not None:
        config["eos_token"] = eos
    if max_len is not None:
        config["model_max_length"] = int(max_len)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return True


def eos_text(tok) -> str | None:
    """The text that stands for a tokenizer's EOS id in Hugging Face files (and in the
    server's /tokenize): sentencepiece's own piece (`</s>`), else <|endoftext|>."""
    if tok.eos_id is None:
        return None
    if isinstance(tok, SentencePieceTokenizer):
        return tok.sp.id_to_piece(tok.eos_id)
    return EOS_TOKEN


def convert(tok) -> tuple[tokenizers.Tokenizer, str | None]:
    """-> (the `tokenizers` equivalent of a gptjax tokenizer, its EOS token's text or None)."""
    if isinstance(tok, HFTokenizer):
        hf = tok.tok
    elif isinstance(tok, SentencePieceTokenizer):
        hf = _checked(tok, _from_sentencepiece(tok.model_bytes))
    elif tok.kind == "char":
        hf = _from_chars(tok)
    else:
        raise UserError(f"cannot export a {tok.kind!r} tokenizer as Hugging Face files")
    return hf, eos_text(tok)


def _from_chars(tok) -> tokenizers.Tokenizer:
    hf = tokenizers.Tokenizer(models.BPE({c: i for i, c in enumerate(tok.chars)}, []))
    hf.decoder = decoders.Fuse()
    if tok.eos_id is not None:
        hf.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
    return hf


def _from_sentencepiece(model_bytes: bytes) -> tokenizers.Tokenizer:
    if pb is None:
        raise UserError("cannot read this sentencepiece model's settings (sentencepiece's "
                        "protobuf module does not load): it cannot be exported")
    proto = pb.ModelProto()
    proto.ParseFromString(model_bytes)
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    pieces = [(p.piece, p.score) for p in proto.pieces]
    kind = pb.TrainerSpec.ModelType.Name(trainer.model_type)
    if kind == "UNIGRAM":
        model = models.Unigram(pieces, trainer.unk_id, trainer.byte_fallback)
    elif kind == "BPE":
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        model = models.BPE(vocab, _merges(vocab), unk_token=pieces[trainer.unk_id][0],
                           fuse_unk=True, byte_fallback=trainer.byte_fallback)
    else:
        raise UserError(f"cannot export a sentencepiece {kind.lower()} model (only BPE and "
                        f"unigram models convert)")
    hf = tokenizers.Tokenizer(model)
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE))
    hf.normalizer = normalizers.Sequence(steps)
    if trainer.split_digits:
        hf.pre_tokenizer = pre_tokenizers.Digits(individual_digits=True)
    types = pb.ModelProto.SentencePiece
    hf.add_tokens([AddedToken(p.piece, normalized=False, special=False)
                   for p in proto.pieces if p.type == types.USER_DEFINED])
    hf.add_special_tokens([AddedToken(p.piece, normalized=False, special=True)
                           for p in proto.pieces if p.type == types.CONTROL])
    undo = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        undo.append(decoders.Strip(" ", 1, 0))
    hf.decoder = decoders.Sequence(undo)
    return hf


def _merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """A sentencepiece BPE's merges: every split of a piece into two pieces, ranked by the
    merged piece's id (sentencepiece numbers pieces in merge order), then by the halves' ids."""
    merges = []
    for piece, i in vocab.items():
        for j in range(1, len(piece)):
            a, b = piece[:j], piece[j:]
            if a in vocab and b in vocab:
                merges.append((i, vocab[a], vocab[b], a, b))
    return [(a, b) for *_, a, b in sorted(merges)]


def _checked(tok: SentencePieceTokenizer, hf) -> tokenizers.Tokenizer:
    """`hf` if it encodes the model's own pieces and a probe text as sentencepiece does."""
    sp = tok.sp
    own = [sp.id_to_piece(i) for i in range(tok.vocab_size)
           if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))]
    for text in [_PROBE, "".join(own).replace(SPACE, " ")]:
        if hf.encode(text, add_special_tokens=False).ids != list(tok.encode(text)):
            raise UserError("this sentencepiece model's Hugging Face conversion encodes text "
                            "differently from sentencepiece: it cannot be exported exactly")
    return hf
