"""One path layer for local directories and bucket URLs (`gs://bucket/run`, `s3://...`).

Everything gptjax keeps in a workdir goes through here: config.json, the tokenizer,
metrics.jsonl, TensorBoard events, loss.png and the token caches. Orbax writes the checkpoints
to the same place through the same library, `etils.epath`, and on `gs://` commits them without
a rename (a `commit_success.txt` object written last), so a bucket needs no FUSE mount.

    workdir = paths.prepare_dir("gs://bucket/run")   # checked at start: bucket, permissions
    paths.write_text(paths.join(workdir, "config.json"), text)   # atomic locally, one object
    local = paths.local_copy(url)                    # for numpy memmaps: a local file

A local path behaves as before: made absolute, directories created on demand, files written
to a temporary name and renamed. On a URL there is no append and no rename, but an upload is
atomic: files are written as whole objects, append-only logs are written to a local staging
directory and uploaded (`Staged`), and a file that must be memory-mapped is downloaded once
(`local_copy`). `gs://` goes through gcsfs (`pip install 'gptjax[gcs]'`); gptjax/__init__.py
sets EPATH_USE_TF=false so that etils (and Orbax with it) use gcsfs too rather than switching
to tf.io.gfile whenever TensorFlow is installed: one client, the one the tests run against a
GCS emulator (tests/test_gcs.py).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import os
import shutil
import socket
import tempfile
import time
import uuid

from etils import epath

from gptjax.errors import UserError

REMOTE_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "gptjax", "remote")


def is_url(path) -> bool:
    return "://" in os.fspath(path)


def resolve(path) -> str:
    """A URL without its trailing '/', or an absolute local path."""
    path = os.fspath(path)
    if is_url(path):
        scheme, rest = path.split("://", 1)
        if not rest.strip("/"):
            raise UserError(f"{path}: give a bucket and a path, e.g. {scheme}://BUCKET/run")
        return f"{scheme}://{rest.rstrip('/')}"
    return os.path.abspath(os.path.expanduser(path))


def join(base, *names: str) -> str:
    base = os.fspath(base)
    if is_url(base):
        return "/".join([base.rstrip("/"), *names])
    return os.path.join(base, *names)


def name(path) -> str:
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def _p(path) -> epath.Path:
    return epath.Path(path)


# ----------------------------------------------------------------------------- queries


def exists(path) -> bool:
    return _p(path).exists() if is_url(path) else os.path.exists(path)


def isfile(path) -> bool:
    return _p(path).is_file() if is_url(path) else os.path.isfile(path)


def isdir(path) -> bool:
    return _p(path).is_dir() if is_url(path) else os.path.isdir(path)


def listdir(path) -> list[str]:
    if is_url(path):
        return sorted(p.name for p in _p(path).iterdir()) if isdir(path) else []
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def getsize(path) -> int:
    return _p(path).stat().length if is_url(path) else os.path.getsize(path)


def walk_files(path) -> list[str]:
    """Every file under the directory `path`, as sorted '/'-separated names relative to it."""
    path = os.fspath(path)
    if not isdir(path):
        return []
    out = []
    if is_url(path):
        scheme, base = path.split("://", 1)
        for root, _, files in _p(path).walk():
            root = os.fspath(root).split("://", 1)[-1].rstrip("/")
            rel = root[len(base):].strip("/")
            out += [f"{rel}/{f}" if rel else f for f in files]
        return sorted(out)
    for root, _, files in os.walk(path):
        rel = os.path.relpath(root, path)
        out += [f if rel == "." else "/".join([*rel.split(os.sep), f]) for f in files]
    return sorted(out)


# ----------------------------------------------------------------------------- reads, writes


def open(path, mode: str = "r"):  # noqa: A001 - paths.open, like the builtin
    if is_url(path):
        return _p(path).open(mode)
    return builtins.open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def makedirs(path) -> None:
    """Local: mkdir -p. URL: nothing (a bucket has no directories; gcsfs would even create a
    missing *bucket*, which `prepare_dir` reports instead)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def local_tmp(final: str) -> str:
    """A local file to write before `commit(tmp, final)`; unique per host and process, so
    several processes building the same file on a shared disk never see half of it."""
    if is_url(final):
        return os.path.join(tempfile.gettempdir(), f"gptjax-{uuid.uuid4().hex[:8]}-{name(final)}")
    makedirs(os.path.dirname(os.path.abspath(final)))
    return f"{final}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def commit(tmp: str, final: str) -> None:
    """Publishes the finished local file `tmp` as `final`: a rename, or one upload."""
    if is_url(final):
        try:
            upload(tmp, final)
        finally:
            os.remove(tmp)
    else:
        os.replace(tmp, final)


def write_bytes(path, data: bytes) -> None:
    """Atomic: readers see the old file or the new one, never a part."""
    path = os.fspath(path)
    if is_url(path):
        _p(path).write_bytes(data)
        return
    tmp = local_tmp(path)
    try:
        with builtins.open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def remove(path) -> None:
    if is_url(path):
        _p(path).unlink(missing_ok=True)
    elif os.path.exists(path):
        os.remove(path)


def store_checksums(url) -> dict[str, dict]:
    """{name relative to `url`: {"size", "crc32c"}} of the objects under a bucket URL whose
    store keeps a CRC32C (GCS: every object's `crc32c` metadata), from one listing and without
    reading them; {} where the store keeps none."""
    import fsspec  # comes with gcsfs (the gcs extra), the client of every gs:// path

    fs, root = fsspec.core.url_to_fs(os.fspath(url))
    out = {}
    for key, info in fs.find(root, detail=True).items():
        crc = info.get("crc32c")
        if crc and info.get("type", "file") == "file":
            rel = key[len(root):].strip("/")
            digest = int.from_bytes(base64.b64decode(crc), "big")
            out[rel] = {"size": int(info["size"]), "crc32c": f"crc32c:{digest:08x}"}
    return out


def move_tree(src, dst) -> None:
    """Moves the directory `src` to `dst` (a rename locally; on a URL each object is copied,
    then the originals are removed: the content is kept, never only deleted)."""
    if not is_url(src):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.rename(src, dst)
        return
    names = walk_files(src)
    for n in names:
        copy(join(src, *n.split("/")), join(dst, *n.split("/")))
    for n in names:
        remove(join(src, *n.split("/")))


def upload(local: str, url: str) -> None:
    with builtins.open(local, "rb") as src, _p(url).open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)


def copy(src, dst) -> None:
    """A whole file from `src` to `dst`, either one local or a URL, streamed; `dst` appears
    whole or not at all (a local temporary file renamed, or one upload)."""
    tmp = local_tmp(dst)
    try:
        with open(src, "rb") as f, builtins.open(tmp, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 22)
        commit(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def local_copy(path) -> str:
    """A local file with the content of `path` (itself when local), e.g. to memory-map.

    A URL is downloaded once into ~/.cache/gptjax/remote/ and reused while its size matches;
    only for files that are never rewritten under the same name (token caches)."""
    path = os.fspath(path)
    if not is_url(path):
        return path
    key = hashlib.sha256(path.encode()).hexdigest()[:16]
    local = os.path.join(REMOTE_CACHE, f"{key}-{name(path)}")
    size = getsize(path)
    if not (os.path.isfile(local) and os.path.getsize(local) == size):
        os.makedirs(REMOTE_CACHE, exist_ok=True)
        tmp = f"{local}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with _p(path).open("rb") as src, builtins.open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return local


# ----------------------------------------------------------------------------- workdirs


def local_dir(path, flag: str, command: str) -> str:
    """`path` made absolute, for a command that writes only local directories: a URL is one
    clear line, never a local directory named `gs:`."""
    if is_url(path):
        raise UserError(f"{flag} {path}: {command} writes a local directory; give a local path")
    return resolve(path)


def prepare_dir(path, flag: str = "--workdir") -> str:
    """Resolves `path` and checks *now* that this process can write there (a missing bucket,
    a permission error or a file in the way is one line at start, not an error after the
    first step); -> the resolved path."""
    if not path:
        raise UserError(f"{flag} is required")
    path = resolve(path)
    if is_url(path):
        _check_bucket(path, flag)
        return path
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is a file; give a directory (it is created)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {flag} {path}: {e.strerror}") from None
    return path


def _check_bucket(url: str, flag: str) -> None:
    scheme, rest = url.split("://", 1)
    bucket = f"{scheme}://{rest.split('/', 1)[0]}"
    probe = join(url, f".gptjax-write-test-{socket.gethostname()}-{os.getpid()}")
    try:
        if not _p(bucket).exists():
            raise FileNotFoundError(bucket)
        write_bytes(probe, b"")
        remove(probe)
    except ImportError as e:
        raise UserError(f"{flag} {url}: {scheme}:// paths need an extra package ({e}); "
                        f"pip install 'gptjax[gcs]'") from None
    except NotImplementedError:
        raise UserError(f"{flag} {url}: {scheme}:// is not supported; use a local path, gs://, "
                        f"s3:// or az://") from None
    except FileNotFoundError:
        raise UserError(f"{flag} {url}: bucket {bucket} does not exist; create it first "
                        f"(gcloud storage buckets create {bucket})") from None
    except OSError as e:  # gcsfs: 401 / 403 and other HTTP errors
        raise UserError(f"{flag} {url}: cannot write there: {first_line(e)}") from None


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return " ".join(lines[:2])[:300] if lines else type(e).__name__


class Staged:
    """A local directory whose files `sync()` uploads into `remote` (for a local `remote`,
    `remote` itself, and `sync` does nothing): append-only logs (metrics.jsonl, TensorBoard
    events) on a bucket, which can only replace whole objects."""

    def __init__(self, remote: str, every: float = 10.0):
        self.remote, self.every = remote, every
        self.url = is_url(remote)
        self.local = tempfile.mkdtemp(prefix="gptjax-staged-") if self.url else remote
        self._sent: dict[str, tuple] = {}
        self._last = time.monotonic()

    def path(self, *names: str) -> str:
        return os.path.join(self.local, *names)

    def fetch(self, name_: str) -> None:
        """Starts the local copy of `name_` from the remote one (resuming a run)."""
        if self.url and isfile(join(self.remote, name_)):
            with builtins.open(self.path(name_), "wb") as f:
                f.write(read_bytes(join(self.remote, name_)))

    def sync(self, force: bool = True) -> None:
        """Uploads every file changed since the last sync (`force=False`: at most every
        `every` seconds)."""
        if not self.url or (not force and time.monotonic() - self._last < self.every):
            return
        self._last = time.monotonic()
        for root, _, files in os.walk(self.local):
            for f in files:
                local = os.path.join(root, f)
                st = os.stat(local)
                rel = os.path.relpath(local, self.local)
                if self._sent.get(rel) != (st.st_size, st.st_mtime_ns):
                    upload(local, join(self.remote, *rel.split(os.sep)))
                    self._sent[rel] = (st.st_size, st.st_mtime_ns)

    def close(self) -> None:
        try:
            self.sync()
        finally:
            if self.url:
                shutil.rmtree(self.local, ignore_errors=True)
