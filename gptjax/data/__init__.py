"""Input pipeline: sources -> tokenizer -> packed, sharded, resumable batches (docs/data.md).

The contract the rest of gptjax relies on (keep it stable):

    tok = make_tokenizer(config, workdir)           # trains or loads; saved in the workdir
    it = make_train_iter(config, tok, process_index, process_count)  # or rows=host_rows(...)
    batch = next(it)        # {'inputs': int32 [B_host, T], 'targets': int32 [B_host, T]}
    state = it.get_state()  # JSON-serialisable; it.set_state(state) resumes exactly there
    for batch in make_eval_batches(config, tok, process_index, process_count): ...

B_host = config.train.batch_size // process_count (or len(rows): the rows of each global batch
this process's devices hold, `gptjax.parallel.sharding.host_rows`), T = config.data.seq_len;
`targets` is `inputs` shifted left by one token. Importing this package does not import
TensorFlow: only reading a TFDS / files source (to tokenize it once) or data.loader=tf does.

`data.source` names an entry of the source registry (`registry.py`; the built-in ones are in
`sources.py`): `register_source(Source(...))` adds one, `source_names()` lists them.
"""

from __future__ import annotations

from gptjax.data import registry, sources  # sources: registers the built-in sources
from gptjax.data.pipeline import make_eval_batches, make_train_iter, prepare_splits, split_tokens
from gptjax.data.registry import Source
from gptjax.data.registry import get as get_source
from gptjax.data.registry import names as source_names
from gptjax.data.registry import register as register_source
from gptjax.data.registry import unregister as unregister_source
from gptjax.data.tokenizer import Tokenizer, load_tokenizer, make_tokenizer

__all__ = ["Source", "Tokenizer", "get_source", "load_tokenizer", "make_eval_batches",
           "make_tokenizer", "make_train_iter", "prepare_splits", "register_source", "registry",
           "source_names",
           "sources", "split_tokens", "unregister_source"]
