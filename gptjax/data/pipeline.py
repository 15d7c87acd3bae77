"""Batches: cached token arrays -> fixed windows -> seeded, per-host, exactly resumable batches.

A split is tokenized once (`store.py`) into one flat array (documents joined by EOS). Training
reads *windows* of seq_len + 1 tokens at stride seq_len (window w covers tokens
[shift + w*L, shift + w*L + L]; consecutive windows share one token, so each token is a target
at most once per epoch -- all but fewer than 2L of them exactly once). Windows cross document
boundaries: the model sees `... end of doc A, EOS, start of doc B ...` with full causal
attention, as GPT-2 / nanoGPT train.

The stream of windows is the concatenation of epochs; epoch e is a permutation of all windows
drawn from (data.seed, e), with a random shift in [0, L) so token positions inside windows differ
from epoch to epoch. Global batch k is stream positions [k*B, (k+1)*B); each process reads only
its rows r of it (positions k*B + r): by default process i of n the block [i*B/n, (i+1)*B/n),
in training the rows its devices hold (`gptjax.parallel.sharding.host_rows`; processes that hold
replicas of the same rows read the same rows).
The iterator's state is the stream position: saving and restoring it is O(1) and exact, and it
stays meaningful if the number of processes or the batch size changes on resume.

Two loaders yield identical batches: tf.data (indices -> gather -> prefetch) and plain numpy
with a prefetch thread (the only one on machines without TensorFlow); data.loader=auto takes the
one the source names (`Source.loader`: tf for tfds / files, numpy for shards).

A source that makes its own batches (`Source.batches`, e.g. synthetic) skips all of this.
"""

from __future__ import annotations

import atexit
import importlib.util
import queue
import sys
import threading
import weakref

import numpy as np

from gptjax.data import registry
from gptjax.data.store import (  # noqa: F401 - re-exported: the pipeline's token arrays
    prepare_part,
    prepare_splits,
    split_tokens,
    token_store,
)
from gptjax.errors import UserError

LOADERS = ("auto", *registry.LOADERS)
# Up to this many windows an epoch's order is a stored permutation (8 bytes a window); above,
# a keyed bijection computed per position (`feistel`): memory independent of the corpus.
PERMUTATION_MAX = 1 << 24
EVAL_SEED_OFFSET = 1_000_003   # a `batches` source's eval stream: seed + this
_PREFETCHING: weakref.WeakSet = weakref.WeakSet()   # iterators whose prefetch thread runs


@atexit.register
def _stop_prefetching() -> None:
    """Stops the prefetch threads before the interpreter finalizes: a daemon thread caught
    inside numpy's C++ code then aborts the process ("terminate called without an active
    exception") after the program has already finished."""
    for it in list(_PREFETCHING):
        it.close()


# ----------------------------------------------------------------------------- windows

class Windows:
    """Stream position -> window start offset, epoch by epoch (see the module docstring)."""

    def __init__(self, num_tokens: int, seq_len: int, seed: int, shuffle: bool, what: str):
        if seq_len < 1:
            raise UserError(f"data.seq_len={seq_len} must be >= 1")
        if num_tokens < seq_len + 1:
            raise UserError(f"{what} has {num_tokens} tokens, fewer than data.seq_len+1="
                            f"{seq_len + 1}; lower data.seq_len or use more text")
        if seed < 0:
            raise UserError(f"data.seed={seed} must be >= 0")
        self.seq_len, self.seed, self.shuffle = seq_len, seed, shuffle
        # A random shift needs one spare window of room; tiny splits go without it.
        self.shifted = shuffle and num_tokens >= 2 * seq_len + 1
        span = num_tokens - seq_len if self.shifted else num_tokens - 1
        self.num_windows = span // seq_len
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[np.ndarray, int]] = {}

    def epoch(self, e: int) -> tuple[np.ndarray | None, int]:
        with self._lock:
            hit = self._cache.get(e)
            if hit is None:
                if not self.shuffle:
                    hit = (None, 0)
                else:
                    rng = np.random.default_rng([self.seed, e, 0x6A09E667])
                    if self.num_windows <= PERMUTATION_MAX:
                        order = rng.permutation(self.num_windows)
                    else:           # too many windows to store their order: computed keys
                        order = tuple(int(k) for k in rng.integers(1 << 62, size=4))
                    shift = int(rng.integers(self.seq_len)) if self.shifted else 0
                    hit = (order, shift)
                self._cache[e] = hit
                while len(self._cache) > 3:   # keep the epochs next to e (prefetch, rewinds)
                    del self._cache[max(self._cache, key=lambda k: abs(k - e))]
            return hit

    def starts(self, position: int, count: int) -> np.ndarray:
        """Token offsets of the windows at stream positions [position, position + count)."""
        return self.at(np.arange(position, position + count, dtype=np.int64))

    def at(self, positions: np.ndarray) -> np.ndarray:
        """Token offsets of the windows at the given stream positions."""
        epochs, idx = np.divmod(np.asarray(positions, np.int64), self.num_windows)
        out = np.empty(len(epochs), np.int64)
        for e in np.unique(epochs):
            perm, shift = self.epoch(int(e))
            sel = epochs == e
            if perm is None:
                w = idx[sel]
            elif isinstance(perm, tuple):
                w = feistel(idx[sel], self.num_windows, perm)
            else:
                w = perm[idx[sel]]
            out[sel] = shift + w * self.seq_len
        return out


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def feistel(idx: np.ndarray, n: int, keys: tuple) -> np.ndarray:
    """A keyed bijection of [0, n), applied to `idx`: a 4-round Feistel network on the smallest
    even number of bits that holds n, cycle-walked back into [0, n) (each value is permuted
    again until it lands there). An epoch's window order for splits of more than
    PERMUTATION_MAX windows: O(1) memory, any position computed on its own."""
    bits = max(2, int(n - 1).bit_length())
    half = np.uint64((bits + 1) // 2)
    mask = np.uint64((1 << int(half)) - 1)
    out = np.asarray(idx, np.uint64).copy()
    todo = np.ones(out.shape, bool)
    while todo.any():
        y = out[todo]
        for k in keys:
            left, right = y >> half, y & mask
            y = (right << half) | (left ^ (_mix(right ^ np.uint64(k)) & mask))
        out[todo] = y
        todo = out >= np.uint64(n)
    return out.astype(np.int64)


def host_batch(config, process_index: int, process_count: int) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise UserError(f"process_index={process_index} is not in [0, {process_count})")
    b = config.train.batch_size
    if b % process_count:
        raise UserError(f"train.batch_size={b} is not divisible by {process_count} processes")
    return b // process_count


def _block(process_index: int, process_count: int, global_batch: int) -> np.ndarray:
    bh = global_batch // process_count
    return process_index * bh + np.arange(bh, dtype=np.int64)


def batch_rows(config, process_index: int, process_count: int, rows=None) -> np.ndarray:
    """The rows of each global batch this process reads: `rows` (mesh-aware, from
    gptjax.parallel.sharding.host_rows), else its contiguous block of B / process_count."""
    if rows is not None:
        return np.asarray(rows, np.int64)
    host_batch(config, process_index, process_count)
    return _block(process_index, process_count, config.train.batch_size)


def _gather(tokens, starts: np.ndarray, seq_len: int) -> dict:
    if hasattr(tokens, "windows"):   # shards read in place: one range per window
        w = tokens.windows(starts, seq_len + 1).astype(np.int32)
    else:
        w = np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int32)
    return {"inputs": np.ascontiguousarray(w[:, :-1]), "targets": np.ascontiguousarray(w[:, 1:])}


def _tf_available() -> bool:
    if "tensorflow" in sys.modules:
        return True
    return importlib.util.find_spec("tensorflow") is not None


def choose_loader(config) -> str:
    loader = config.data.loader
    if loader not in LOADERS:
        raise UserError(f"data.loader={loader!r}: choose one of {', '.join(LOADERS)}")
    if loader == "auto":
        return "tf" if registry.of(config).loader == "tf" and _tf_available() else "numpy"
    if loader == "tf" and not _tf_available():
        raise UserError("data.loader=tf needs TensorFlow; use data.loader=numpy")
    return loader


class TrainIterator:
    """Infinite iterator of this process's slice of each global batch; see get_state()."""

    def __init__(self, tokens: np.ndarray, windows: Windows, global_batch: int,
                 process_index: int, process_count: int, loader: str = "numpy",
                 prefetch: int = 2, rows=None):
        self.tokens, self.windows = tokens, windows
        self.global_batch = global_batch
        if rows is None:
            rows = _block(process_index, process_count, global_batch)
        self.rows = np.asarray(rows, np.int64)   # this process's rows of each global batch
        self.host_batch = len(self.rows)
        self.seq_len = windows.seq_len
        self.loader, self.prefetch = loader, max(0, int(prefetch))
        self.position = 0          # global stream position of the next batch to hand out
        self._source = None        # running producer: a tf.data iterator or a thread
        self._thread = self._stop = self._queue = None

    # -- the batches
    def batch_at(self, position: int) -> dict:
        """This process's part of the global batch starting at stream `position`."""
        starts = self.windows.at(position + self.rows)
        return _gather(self.tokens, starts, self.seq_len)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.loader == "tf":
            if self._source is None:
                self._source = self._tf_iterator(self.position)
            batch = next(self._source)
        elif self.prefetch == 0:
            batch = self.batch_at(self.position)
        else:
            if self._thread is None:
                self._start_thread(self.position)
            pos, batch = self._queue.get()
            if isinstance(batch, BaseException):
                self._thread = None
                raise batch
            assert pos == self.position, (pos, self.position)
        self.position += self.global_batch
        return batch

    # -- state
    def get_state(self) -> dict:
        w = self.windows
        return {"position": int(self.position), "epoch": int(self.position // w.num_windows),
                "seed": w.seed, "seq_len": w.seq_len, "num_windows": w.num_windows,
                "shuffle": w.shuffle}

    def set_state(self, state: dict) -> None:
        if "position" not in state:
            raise UserError(f"input-iterator state {state!r} was not written by this pipeline "
                            "(a different data.source?)")
        position = int(state["position"])
        w = self.windows
        if (state.get("num_windows"), state.get("seq_len")) != (w.num_windows, w.seq_len):
            # Same data at another seq_len (or re-tokenized): keep the same fraction of epochs.
            old = max(1, int(state.get("num_windows") or w.num_windows))
            position = round(position / old * w.num_windows)
            print(f"gptjax: warning: resuming the input at epoch {position / w.num_windows:.3f} "
                  "(the saved position was for another seq_len or token count)", file=sys.stderr)
        self.close()
        self.position = position

    def close(self) -> None:
        self._source = None
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread = None
        _PREFETCHING.discard(self)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- producers
    def _start_thread(self, position: int) -> None:
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        stop, q = self._stop, self._queue

        def work():
            pos = position
            while not stop.is_set():
                try:
                    item = (pos, self.batch_at(pos))
                except BaseException as e:  # noqa: BLE001 - handed to the consumer
                    item = (pos, e)
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if isinstance(item[1], BaseException):
                    return
                pos += self.global_batch
        self._thread = threading.Thread(target=work, daemon=True, name="gptjax-data")
        self._thread.start()
        _PREFETCHING.add(self)

    def _tf_iterator(self, position: int):
        import tensorflow as tf
        L, bh, B = self.seq_len, self.host_batch, self.global_batch

        def starts(j):
            return self.windows.at(position + int(j) * B + self.rows)

        ds = tf.data.Dataset.range(1 << 62)
        ds = ds.map(lambda j: tf.ensure_shape(
            tf.numpy_function(starts, [j], tf.int64, stateful=False), [bh]))
        if isinstance(self.tokens, np.ndarray) and self.tokens.size <= 1 << 28:
            # a single-file split: gather in TF's own threads from memory
            table = tf.constant(np.asarray(self.tokens))
            offsets = tf.range(L + 1, dtype=tf.int64)

            def gather(s):
                return tf.cast(tf.gather(table, s[:, None] + offsets[None, :]), tf.int32)
        else:                             # shards read in place, a large memmap: numpy
            def gather_np(s):
                w = _gather(self.tokens, s, L)
                return np.concatenate([w["inputs"], w["targets"][:, -1:]], axis=1)

            def gather(s):
                return tf.ensure_shape(tf.numpy_function(gather_np, [s], tf.int32), [bh, L + 1])
        ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.map(lambda w: {"inputs": w[:, :-1], "targets": w[:, 1:]})
        ds = ds.prefetch(self.prefetch if self.prefetch > 0 else tf.data.AUTOTUNE)
        return ds.as_numpy_iterator()


# ----------------------------------------------------------------------------- public

def make_train_iter(config, tokenizer, process_index: int = 0, process_count: int = 1,
                    workdir: str | None = None, rows=None):
    """This process's training batches: {'inputs','targets'} int32 [B/process_count, T], or
    the given `rows` of each global batch (gptjax.parallel.sharding.host_rows)."""
    d = config.data
    source = registry.of(config)
    rows = batch_rows(config, process_index, process_count, rows)
    if source.batches is not None:
        return source.batches(config, process_index, process_count, 0, rows)
    tokens = split_tokens(config, tokenizer, d.train_split, workdir)
    windows = Windows(tokens.size, d.seq_len, d.seed, d.shuffle,
                      f"training split {d.train_split!r}")
    return TrainIterator(tokens, windows, config.train.batch_size, process_index, process_count,
                         loader=choose_loader(config), prefetch=d.prefetch, rows=rows)


def make_eval_batches(config, tokenizer, process_index: int = 0, process_count: int = 1,
                      workdir: str | None = None, rows=None) -> list[dict]:
    """A fixed list of up to train.eval_batches batches: non-overlapping windows from the start
    of the eval split, this process's slice of each. A split too small for one global batch
    gives one batch whose windows repeat (the loss average is unchanged in expectation)."""
    d = config.data
    if int(config.train.eval_batches) <= 0:
        return []
    source = registry.of(config)
    rows = batch_rows(config, process_index, process_count, rows)
    if source.batches is not None:   # held out by seed: another stream of the same kind
        it = source.batches(config, process_index, process_count, EVAL_SEED_OFFSET, rows)
        return [next(it) for _ in range(config.train.eval_batches)]
    if not d.eval_split:
        raise UserError("data.eval_split is empty: no held-out data to evaluate on")
    tokens = split_tokens(config, tokenizer, d.eval_split, workdir)
    windows = Windows(tokens.size, d.seq_len, 0, False, f"eval split {d.eval_split!r}")
    n, B = windows.num_windows, config.train.batch_size
    num_batches = max(1, min(int(config.train.eval_batches), n // B))
    out = []
    for b in range(num_batches):
        idx = (b * B + rows) % n
        out.append(_gather(tokens, idx * d.seq_len, d.seq_len))
    return out
