"""A Hugging Face `tokenizer.json` as a gptjax tokenizer (data.tokenizer.kind=hf).

It is saved in the workdir as `hf_tokenizer.json` (not to be confused with the char tokenizer's
`tokenizer.chars.json`); `gptjax convert import` puts GPT-2's there. Needs the `tokenizers`
package (the `gptjax[interop]` extra).
"""

from __future__ import annotations

import hashlib

import numpy as np

from gptjax.errors import UserError
from gptjax.storage import paths

try:
    import tokenizers
except ImportError:  # optional: only kind=hf needs it
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
