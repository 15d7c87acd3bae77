"""Data sources by name: every value `data.source` may take, and what each one provides.

A source is one `Source` entry here; the rest of gptjax asks the registry and never names a
source. A source provides exactly one of

* `documents(config, split)` -> an iterable of `str`, one per document: text, which is tokenized
  once into a token store (`store.py`) and which char / bpe / unigram tokenizers are trained on;
* `store_dir(config)` -> the directory of a token store that is already tokenized;
* `batches(config, process_index, process_count, seed, rows)` -> an iterator of ready batches
  with `get_state` / `set_state` (made-up tokens: no text, no store); `rows` are the rows of
  each global batch this process reads (`pipeline.batch_rows`).

The built-in sources (tfds, files, shards, synthetic) are registered by `gptjax/data/sources.py`
when `gptjax.data` is imported; `register(Source(...))` adds one more (docs/data.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterable

from gptjax.config.loader import did_you_mean
from gptjax.errors import UserError

LOADERS = ("tf", "numpy")
_PROVIDERS = {"documents": "documents", "store_dir": "tokens", "batches": "batches"}  # field: what


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """One value of `data.source` (see the module docstring for the three kinds)."""

    name: str
    help: str                                   # one line for `gptjax data sources`
    keys: tuple[str, ...] = ()                  # config.data keys it reads; keys[0] names the data
    required: dict[str, str] = dataclasses.field(default_factory=dict)  # key -> 'VALUE (hint)'
    documents: Callable[..., Iterable[str]] | None = None   # (config, split) -> documents
    store_dir: Callable | None = None           # (config) -> directory of a token store
    batches: Callable | None = None             # (config, index, count, seed, rows) -> batches
    tokenizer: Callable | None = None           # (config) -> the tokenizer the source carries
    cache_key: Callable | None = None           # (config) -> JSON-able identity of its text
    label: Callable | None = None               # (config) -> name for cache directories, logs
    loader: str = "numpy"                       # what data.loader=auto uses: 'tf' or 'numpy'
    part: Callable | None = None                # (config, split, worker, workers) -> read_part

    @property
    def provides(self) -> str:
        """'documents' (text), 'tokens' (a ready token store) or 'batches'."""
        return next(what for field, what in _PROVIDERS.items() if getattr(self, field) is not None)

    @property
    def trains_tokenizer(self) -> bool:
        """Whether a char / bpe / unigram tokenizer is trained on this source's text."""
        return self.documents is not None and self.tokenizer is None

    def check(self, config) -> None:
        """The keys it reads exist, and the ones it needs are set."""
        d = config.data
        for key in self.keys:
            if key not in d:
                raise UserError(f"data.source={self.name} reads data.{key}, which this config "
                                "does not have; add it to gptjax/config/defaults.py")
        for key, hint in self.required.items():
            if not d[key]:
                raise UserError(f"data.source={self.name} needs data.{key}={hint}")

    def what(self, config) -> str:
        """How messages name the data: `data.tfds_name='lm1b'`."""
        if not self.keys:
            return f"data.source={self.name!r}"
        return f"data.{self.keys[0]}={config.data[self.keys[0]]!r}"

    def describe(self, config) -> str:
        """One line for `gptjax data info`: `tfds (tiny_shakespeare)`."""
        return f"{self.name} ({config.data[self.keys[0]]})" if self.keys else self.name

    def cache_name(self, config) -> str:
        """A file-name-safe label: the prefix of its token-cache directory."""
        label = self.label(config) if self.label else self.name
        return re.sub(r"[^A-Za-z0-9_.-]", "_", label)

    def key(self, config, split: str | None = None) -> dict:
        """A JSON-able identity of (its text[, split]): keys the token and tokenizer caches."""
        if self.documents is None:
            raise UserError(f"data.source={self.name!r} has no text to tokenize")
        d = config.data
        if self.cache_key is not None:
            key = dict(self.cache_key(config))
        else:
            key = {"source": self.name, **{k: d[k] for k in self.keys},
                   "max_documents": d.max_documents}
        if split is not None:
            key["split"] = split
        return key

    def read(self, config, split: str):
        """The documents of one split, at most data.max_documents of them (0 = all)."""
        if self.documents is None:
            raise UserError(f"data.source={self.name!r} has no documents to read; it provides "
                            f"{self.provides} directly")
        docs = self.documents(config, split)
        limit = int(config.data.max_documents)
        return itertools.islice(docs, limit) if limit else iter(docs)


    def read_part(self, config, split: str, worker: int, num_workers: int):
        """Part `worker` of `num_workers` of `read(config, split)`: a contiguous block of its
        documents (`block`), so the parts in order are the split's documents in order. A source
        with a `part` reads only its block; any other is read to count, then to take the
        block."""
        if num_workers == 1:
            return self.read(config, split)
        if self.part is not None:
            return self.part(config, split, worker, num_workers)
        total = sum(1 for _ in self.read(config, split))
        start, stop = block(total, worker, num_workers)
        return itertools.islice(self.read(config, split), start, stop)


def block(total: int, worker: int, num_workers: int) -> tuple[int, int]:
    """Worker `worker` of `num_workers`: items [start, stop) of `total`, in order."""
    return total * worker // num_workers, total * (worker + 1) // num_workers


_SOURCES: dict[str, Source] = {}


def register(source: Source, replace: bool = False) -> Source:
    """Adds a source under `source.name` (`replace=True` swaps an existing one)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", source.name):
        raise ValueError(f"source name {source.name!r}: use letters, digits, '_', '.', '-'")
    given = [p for p in _PROVIDERS if getattr(source, p) is not None]
    if len(given) != 1:
        raise ValueError(f"source {source.name!r} must set exactly one of "
                         f"{', '.join(_PROVIDERS)}; it sets {', '.join(given) or 'none'}")
    if source.loader not in LOADERS:
        raise ValueError(f"source {source.name!r}: loader must be one of {LOADERS}")
    if source.name in _SOURCES and not replace:
        raise ValueError(f"a data source named {source.name!r} is already registered")
    _SOURCES[source.name] = source
    return source


def unregister(name: str) -> None:
    _SOURCES.pop(name, None)


def names(where: Callable[[Source], bool] | None = None) -> list[str]:
    """Registered source names, in registration order (optionally those where `where` holds)."""
    return [n for n, s in _SOURCES.items() if where is None or where(s)]


def get(name: str) -> Source:
    source = _SOURCES.get(name)
    if source is None:
        raise UserError(f"data.source={name!r} is not a data source{did_you_mean(name, _SOURCES)}"
                        f"; choose one of {', '.join(_SOURCES)}")
    return source


def of(config) -> Source:
    """The source `config.data.source` names, checked against the config."""
    source = get(config.data.source)
    source.check(config)
    return source


def documents(config, split: str):
    """Yields the documents (str) of one split of the configured source."""
    yield from of(config).read(config, split)


def source_key(config, split: str | None) -> dict:
    """A JSON-able description of (source[, split]) that keys the token and tokenizer caches."""
    return of(config).key(config, split)
