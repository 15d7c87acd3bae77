"""A TFDS builder for the user's own text: globs of `.txt` / `.md` and `.jsonl` files.

Built once into `data_dir` like any TFDS dataset (`gptjax_local_text/<config>/1.0.0`); the
config name is a hash of the file list, sizes, mtimes and split settings, so editing a file
builds a new version instead of silently reusing a stale one.

Documents: a `.txt` or `.md` file is one document; each line of a `.jsonl` file is one document (its
`data.jsonl_key` field). Empty documents are skipped. Splits `train` and `validation`:
  * many documents (>= 2 / holdout_fraction): a document goes to `validation` when a hash of
    (file name, line) falls below holdout_fraction -- stable as files are appended to;
  * few documents (e.g. one novel): each document is cut at a line break, its first
    1 - holdout_fraction of the characters to `train`, the rest to `validation`
    (how tiny_shakespeare splits its single text).
holdout_fraction=0 gives a `train` split only. Bytes that are not UTF-8 are an error unless
data.encoding_errors=replace|ignore.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os

import tensorflow_datasets as tfds

from gptjax.errors import UserError

NAME = "gptjax_local_text"


@dataclasses.dataclass(eq=False)
class LocalTextConfig(tfds.core.BuilderConfig):
    spec_json: str = "{}"


def _read_text(path: str, errors: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: bytes that are not UTF-8 at offset {e.start}; fix the file or "
                        "set data.encoding_errors=replace (or ignore)") from None


def _documents(spec: dict):
    """Yields (name, text) for every non-empty document of the file set, in file order."""
    errors = spec["encoding_errors"]
    for path, _, _ in spec["files"]:
        base = os.path.basename(path)
        text = _read_text(path, errors)
        if not path.endswith(".jsonl"):   # plain text (.txt, .md): one document
            if text.strip():
                yield base, text
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            key = spec["jsonl_key"]
            if not isinstance(obj, dict) or not isinstance(obj.get(key), str):
                raise UserError(f"{path}:{n}: no string field {key!r} "
                                "(set data.jsonl_key to the field holding the text)")
            if obj[key].strip():
                yield f"{base}:{n}", obj[key]


def _held_out(name: str, fraction: float) -> bool:
    h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 2**32
    return h < fraction


def _cut(text: str, fraction: float) -> int:
    """Index where the held-out tail starts: just after a newline near 1 - fraction."""
    target = int(round(len(text) * (1.0 - fraction)))
    if target >= len(text):
        return len(text)
    nl = text.rfind("\n", 0, target)
    return nl + 1 if nl > 0 else target


class GptjaxLocalText(tfds.core.GeneratorBasedBuilder):
    """Local .txt / .md / .jsonl files as a TFDS dataset with a held-out split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Local text files, documents joined by the tokenizer's EOS."}

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            description="The user's own text files (gptjax data.source=files).",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        spec = json.loads(self.builder_config.spec_json)
        fraction = float(spec["holdout_fraction"])
        if not 0 <= fraction < 1:
            raise UserError(f"data.holdout_fraction={fraction} must be in [0, 1)")
        names = [name for name, _ in _documents(spec)]
        if not names:
            raise UserError("data.files: the corpus is empty (no non-blank document)")
        held = None   # None: cut inside each document
        if fraction > 0 and len(names) >= math.ceil(2 / fraction):
            held = [_held_out(n, fraction) for n in names]
            if not any(held):       # unlucky hashes: still hold one document out
                held[-1] = True
            if all(held):
                held[0] = False
        splits = {"train": self._generate_examples(spec, False, held)}
        if fraction > 0:            # 0: no held-out split at all
            splits["validation"] = self._generate_examples(spec, True, held)
        return splits

    def _generate_examples(self, spec: dict, held: bool, by_document: list[bool] | None):
        fraction = float(spec["holdout_fraction"])
        for i, (_, text) in enumerate(_documents(spec)):
            if by_document is not None:
                if by_document[i] == held:
                    yield f"{i:012d}", {"text": text}
                continue
            cut = _cut(text, fraction)
            part = text[cut:] if held else text[:cut]
            if part:
                yield f"{i:012d}", {"text": part}


def make_builder(spec: dict, data_dir: str | None) -> GptjaxLocalText:
    name = "f" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    config = LocalTextConfig(name=name, description=f"{len(spec['files'])} file(s)",
                             spec_json=json.dumps(spec, sort_keys=True))
    return GptjaxLocalText(config=config, data_dir=data_dir)
