"""GPT-2's byte-level BPE (data.tokenizer.kind=gpt2): the tokenizer of GPT-2 and GPT-3.

    data.tokenizer.path=DIR            DIR/vocab.json + DIR/merges.txt (GPT-2's own: 50257 tokens)
    data.tokenizer.path=VOCAB,MERGES   the same two files named one by one
    data.tokenizer.path=tokenizer.json a Hugging Face tokenizer.json
    data.tokenizer.path=''             a byte-level BPE trained on the source's training text,
                                       data.tokenizer.vocab_size tokens, <|endoftext|> included

Byte-level: every byte has a token, so any text encodes and decodes back unchanged. The result
is a `HFTokenizer` (gptjax/data/hf_tokenizer.py) and is saved in the workdir as its
`hf_tokenizer.json`. Needs the `tokenizers` package (the `gptjax[interop]` extra).
"""

from __future__ import annotations

import os
import tempfile

from gptjax.data.hf_tokenizer import EOS_TOKEN, HFTokenizer
from gptjax.errors import UserError
from gptjax.storage import paths

try:
    import tokenizers
except ImportError:  # optional: only kind=gpt2 / hf need it
    tokenizers = None


def _need_tokenizers() -> None:
    if tokenizers is None:
        raise UserError("data.tokenizer.kind=gpt2 needs `pip install tokenizers` "
                        "(or 'gptjax[interop]')")


def _wrap(json_text: str) -> HFTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tokenizer.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(json_text)
        tok = HFTokenizer.load(path)
    tok.kind = "gpt2"
    return tok


def load(path: str) -> HFTokenizer:
    """GPT-2's files: a directory with vocab.json + merges.txt, 'VOCAB,MERGES', or a
    tokenizer.json."""
    _need_tokenizers()
    path = os.path.expanduser(path)
    if path.endswith(".json") and "," not in path:
        tok = HFTokenizer.load(path)
        tok.kind = "gpt2"
        return tok
    vocab, _, merges = path.partition(",")
    if not merges:
        vocab, merges = paths.join(path, "vocab.json"), paths.join(path, "merges.txt")
    for name in (vocab, merges):
        if not paths.isfile(name):
            raise UserError(f"data.tokenizer.path={path!r}: {name!r} does not exist (give a "
                            f"directory with vocab.json and merges.txt, VOCAB,MERGES, or a "
                            f"tokenizer.json)")
    bpe = tokenizers.ByteLevelBPETokenizer(paths.local_copy(vocab), paths.local_copy(merges))
    bpe.add_special_tokens([EOS_TOKEN])
    return _wrap(bpe.to_str())


def train(texts, vocab_size: int) -> HFTokenizer:
    """A byte-level BPE of `vocab_size` tokens (256 bytes, merges, <|endoftext|>) trained on
    `texts`; a small corpus may run out of merges first (then vocab_size says so)."""
    _need_tokenizers()
    if vocab_size < 257:
        raise UserError(f"data.tokenizer.vocab_size={vocab_size}: a byte-level BPE needs more "
                        f"than the 256 byte tokens and <|endoftext|>")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=int(vocab_size), min_frequency=2,
                            special_tokens=[EOS_TOKEN], show_progress=False)
    return _wrap(bpe.to_str())
