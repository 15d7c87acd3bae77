"""Text from TFDS: any TFDS text dataset, or the user's own files through gptjax's TFDS builder.

`tfds_documents` / `files_documents` (the `tfds` and `files` sources, `sources.py`) yield one
`str` per document. TensorFlow / TFDS are imported here, lazily, and only when a split has to be
read (tokenizing it, or training a tokenizer): once the tokens are cached nothing below runs.

Offline rule: a TFDS dataset that is not prepared in `data_dir` is built from the raw files in
`manual_dir` when they are all there; otherwise, with no network, we fail in seconds with a
message naming `manual_dir` instead of letting TFDS retry its downloads for minutes.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import importlib.resources
import importlib.resources.abc  # noqa: F401 - a complete importlib_resources stand-in
import itertools
import os
import socket
import sys
import threading
import urllib.parse

import absl.logging

from gptjax.data.registry import block
from gptjax.errors import UserError

try:
    import importlib_resources  # noqa: F401 - etils (TFDS' path library) imports this backport
except ImportError:
    importlib_resources = None

MANUAL_DIR_ENV = "GPTJAX_MANUAL_DIR"
OFFLINE_ENV = "GPTJAX_OFFLINE"   # =1: never try the network (fail fast if a download is needed)


# ----------------------------------------------------------------------------- locations

def manual_dir(config) -> str:
    return os.path.expanduser(config.data.manual_dir or os.environ.get(MANUAL_DIR_ENV, ""))


def data_dir(config) -> str | None:
    return os.path.expanduser(config.data.data_dir) if config.data.data_dir else None


# ----------------------------------------------------------------------------- local files

def resolve_files(config) -> list[str]:
    """Expands data.files (comma-separated globs) into a sorted list of .txt/.md/.jsonl files."""
    specs = [s.strip() for s in config.data.files.split(",") if s.strip()]
    if not specs:
        raise UserError("data.source=files needs data.files=GLOB[,GLOB...] (.txt, .md or .jsonl)")
    files: list[str] = []
    for spec in specs:
        matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise UserError(f"data.files: {spec!r} matches no file")
        files.extend(os.path.abspath(m) for m in matches)
    files = sorted(set(files))
    for f in files:
        if not f.endswith((".txt", ".md", ".jsonl")):
            raise UserError(f"data.files: {f!r} is not a .txt, .md or .jsonl file")
    if all(os.path.getsize(f) == 0 for f in files):
        raise UserError(f"data.files={config.data.files!r}: every matching file is empty")
    return files


def files_spec(config) -> dict:
    """Everything that decides the local-files dataset's content (its TFDS config name)."""
    d = config.data
    files = resolve_files(config)
    return {
        "files": [[f, os.path.getsize(f), int(os.path.getmtime(f))] for f in files],
        "jsonl_key": d.jsonl_key, "holdout_fraction": float(d.holdout_fraction),
        "encoding_errors": d.encoding_errors,
    }


# ----------------------------------------------------------------------------- TFDS

def import_tfds():
    """Imports tensorflow_datasets quietly, hiding GPUs from TensorFlow (JAX owns them)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if importlib_resources is None:  # Python >= 3.11 has its API in the standard library
        sys.modules.setdefault("importlib_resources", importlib.resources)
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise UserError(f"data.source=tfds/files needs tensorflow and tensorflow-datasets ({e}); "
                        "on a machine without them train from `gptjax data export` shards "
                        "(data.source=shards)") from None
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
        pass
    tfds.disable_progress_bar()
    absl.logging.set_verbosity(absl.logging.ERROR)
    return tfds


def _online(url: str, timeout: float = 3.0) -> bool:
    """A quick TCP check (DNS included, bounded by a thread) instead of TFDS' long retries."""
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        return False
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    ok = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def _unknown_dataset(tfds, name: str) -> UserError:
    base = name.split(":")[0]
    try:
        names = tfds.list_builders(with_community_datasets=False)
    except TypeError:
        names = tfds.list_builders()
    close = difflib.get_close_matches(base.split("/")[0], names, n=5, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else ""
    return UserError(f"data.tfds_name={name!r} is not a TFDS dataset{hint}")


def tfds_builder(config):
    """The TFDS builder of data.tfds_name, prepared (built offline from manual_dir if needed)."""
    tfds = import_tfds()
    name = config.data.tfds_name
    try:
        builder = tfds.builder(name, data_dir=data_dir(config))
    except Exception as e:  # noqa: BLE001 - DatasetNotFoundError & friends -> one line
        if type(e).__name__ in ("DatasetNotFoundError", "DatasetVariantBlockedError"):
            raise _unknown_dataset(tfds, name) from None
        raise UserError(f"data.tfds_name={name!r}: {_first_line(e)}") from None
    _prepare(tfds, builder, config, f"data.tfds_name={name!r}")
    return builder


def _prepare(tfds, builder, config, what: str, downloads: bool = True) -> None:
    if builder.is_prepared():
        return
    mdir = manual_dir(config)
    try:
        url_infos = builder.url_infos or {}
    except Exception:  # noqa: BLE001 - builders without checksums
        url_infos = {}
    needed = sorted({info.filename for info in url_infos.values() if info.filename})
    have = bool(mdir) and bool(needed) and all(
        os.path.exists(os.path.join(mdir, f)) for f in needed)
    # Datasets that only read manual_dir (no URLs to fetch) need no network check either.
    manual_only = (not url_infos and bool(mdir) and os.path.isdir(mdir) and bool(
        str(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", "") or "").strip()))
    if downloads and not have and not manual_only:
        urls = list(url_infos) or ["https://storage.googleapis.com"]
        if not _online(urls[0]):
            where = (f"data.manual_dir={mdir!r}" if mdir
                     else "data.manual_dir (or $GPTJAX_MANUAL_DIR)")
            files = (", ".join(needed) if len(needed) <= 3 else
                     f"its {len(needed)} raw files ({', '.join(needed[:3])}, ...)")
            files = files or "its raw files"
            raise UserError(
                f"{what} is not prepared in {builder.data_dir!r} and there is no network; put "
                f"{files} in {where}, or point data.data_dir at a prepared copy")
    dl = tfds.download.DownloadConfig(manual_dir=mdir or None)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # keeps `--json` stdout clean
            builder.download_and_prepare(download_config=dl)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        inner = _find_user_error(e)
        if inner is not None:
            raise inner from None
        raise UserError(f"could not prepare {what}: {_first_line(e)}") from None


def _find_user_error(e: BaseException | None) -> UserError | None:
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, UserError):
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _first_line(e: BaseException) -> str:
    lines = [x for x in str(e).strip().splitlines() if x.strip()]
    return lines[0][:300] if lines else type(e).__name__


def files_builder(config):
    """gptjax's TFDS builder over data.files, prepared (built once per file set)."""
    tfds = import_tfds()
    from gptjax.data import local_text  # imports tensorflow_datasets: lazy, like it
    spec = files_spec(config)
    builder = local_text.make_builder(spec, data_dir(config))
    _prepare(tfds, builder, config, f"data.files={config.data.files!r}", downloads=False)
    return builder


def _split_name(builder, split: str, what: str) -> str:
    base = split.split("[")[0].split("+")[0]
    available = list(builder.info.splits.keys())
    if base not in available:
        raise UserError(f"{what} has no split {base!r}; it has {', '.join(available)}")
    return split


def tfds_documents(config, split: str):
    """The `tfds` source: the documents of one split of data.tfds_name."""
    d = config.data
    return _read(tfds_builder(config), split, d.text_key, f"data.tfds_name={d.tfds_name!r}")


def files_documents(config, split: str):
    """The `files` source: the documents of one split of data.files."""
    return _read(files_builder(config), split, "text", f"data.files={config.data.files!r}")


def tfds_part(config, split: str, worker: int, num_workers: int):
    """Part `worker` of `num_workers` of the `tfds` source's split (Source.read_part)."""
    d = config.data
    return _read_part(tfds_builder(config), split, d.text_key, f"data.tfds_name={d.tfds_name!r}",
                      d.max_documents, worker, num_workers)


def files_part(config, split: str, worker: int, num_workers: int):
    """Part `worker` of `num_workers` of the `files` source's split (Source.read_part)."""
    return _read_part(files_builder(config), split, "text", f"data.files={config.data.files!r}",
                      config.data.max_documents, worker, num_workers)


def _read_part(builder, split, key, what, limit, worker, num_workers):
    """A contiguous block of the split's documents: TFDS reads only that slice of a plain split
    (`train[a:b]`, what tfds.split_for_jax_process does per process); a split given with its own
    slicing is read and the block taken."""
    _split_name(builder, split, what)
    total = builder.info.splits[split].num_examples
    if limit:
        total = min(total, int(limit))
    start, stop = block(total, worker, num_workers)
    if start == stop:
        return iter(())
    if "[" not in split and "+" not in split:
        return _read(builder, f"{split}[{start}:{stop}]", key, what)
    return itertools.islice(_read(builder, split, key, what), start, stop)


def _read(builder, split: str, key: str, what: str):
    _split_name(builder, split, what)
    features = builder.info.features
    if key not in features:
        raise UserError(f"{what} has no text feature {key!r}; set data.text_key to one of "
                        f"{', '.join(features.keys())}")
    tfds = sys.modules["tensorflow_datasets"]
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: ex[key])
    for text in tfds.as_numpy(ds):
        yield text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
