"""Content checksums: the one verification mechanism for every artifact gptjax writes
(checkpoint files, token shards, config and tokenizer files).

CRC32C is the checksum Google Cloud Storage keeps for every object (its `crc32c` metadata),
so a file can be checked against its bucket copy without reading it twice; `google-crc32c`
computes it in hardware where the CPU has the instruction.

    digest = integrity.checksum(data)              # "crc32c:1a2b3c4d"
    digest = integrity.file_checksum(path)         # streamed, local or gs://

A *manifest* (`gptjax_manifest.json` in a directory) lists files of that directory with their
size and checksum; `verify` reads them back and raises an `IntegrityError` (one line, exit 2)
naming the directory and the first file that is missing, truncated or changed:

    integrity.write_manifest(step_dir)             # every file now in step_dir
    integrity.update_manifest(workdir, ["config.json"])   # add / refresh some entries
    integrity.verify(step_dir, "checkpoint 20")    # -> files checked, or None: no manifest
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import google_crc32c

from gptjax.errors import UserError
from gptjax.storage import paths

CHUNK = 1 << 20
THREADS = 8  # files read at once (a bucket answers each request with latency; CRC32C and reads
             # release the GIL)
MANIFEST = "gptjax_manifest.json"
FORMAT = "gptjax-manifest/1"


class IntegrityError(UserError):
    """A file does not match its manifest (or cannot be read): corrupt, truncated, missing."""


def checksum(data: bytes) -> str:
    return f"crc32c:{google_crc32c.value(data):08x}"


def _digest(crc: google_crc32c.Checksum) -> str:
    return f"crc32c:{int.from_bytes(crc.digest(), 'big'):08x}"


def file_entry(path, chunk: int = CHUNK) -> dict:
    """{"size": bytes, "crc32c": checksum} of a file, read once in bounded chunks."""
    crc, size = google_crc32c.Checksum(), 0
    with paths.open(path, "rb") as f:
        while block := f.read(chunk):
            crc.update(block)
            size += len(block)
    return {"size": size, "crc32c": _digest(crc)}


def file_checksum(path, chunk: int = CHUNK) -> str:
    """The checksum of a file's bytes, read in bounded chunks."""
    return file_entry(path, chunk)["crc32c"]


def _path(directory, name: str) -> str:
    return paths.join(directory, *name.split("/"))


def _each(fn, items: list) -> list:
    if len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def write_manifest(directory, files: list[str] | None = None, exclude=()) -> dict:
    """Writes `directory/gptjax_manifest.json` for `files` (names relative to `directory`;
    default every file there but `exclude`); -> the manifest. In a bucket that keeps a CRC32C
    of each object (GCS) the entries are the bucket's own, from one listing: nothing is read
    back, whatever the checkpoint's size."""
    if files is None:
        files = [f for f in paths.walk_files(directory) if f != MANIFEST and f not in exclude]
    known = paths.store_checksums(directory) if paths.is_url(directory) else {}
    entries = _each(lambda f: known.get(f) or file_entry(_path(directory, f)), files)
    manifest = {"format": FORMAT, "files": dict(zip(files, entries, strict=True))}
    paths.write_text(paths.join(directory, MANIFEST), json.dumps(manifest, indent=1))
    return manifest


def read_manifest(directory, what: str | None = None) -> dict | None:
    """The manifest of `directory`, or None when it has none (written before manifests were)."""
    path = paths.join(directory, MANIFEST)
    if not paths.isfile(path):
        return None
    try:
        manifest = json.loads(paths.read_text(path))
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError(f"not a {FORMAT} file")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise IntegrityError(f"{what or directory}: {MANIFEST} is unreadable ({e}); the "
                             f"directory cannot be verified") from None
    return manifest


def update_manifest(directory, files: list[str]) -> dict:
    """Adds (or refreshes) the entries of `files` in `directory`'s manifest."""
    old = read_manifest(directory) or {"files": {}}
    entries = {**old["files"], **{f: file_entry(_path(directory, f)) for f in files}}
    manifest = {"format": FORMAT, "files": dict(sorted(entries.items()))}
    paths.write_text(paths.join(directory, MANIFEST), json.dumps(manifest, indent=1))
    return manifest


def problem(directory, name: str, expected: dict) -> str | None:
    """What is wrong with file `name` against its manifest entry, or None when it matches."""
    path = _path(directory, name)
    if not paths.isfile(path):
        return f"{name} is missing"
    try:
        got = file_entry(path)
    except OSError as e:
        return f"{name} cannot be read ({paths.first_line(e)})"
    if got["size"] != expected["size"]:
        return (f"{name} has {got['size']} bytes, its manifest says {expected['size']} "
                f"(truncated or replaced)")
    if got["crc32c"] != expected["crc32c"]:
        return (f"{name} has checksum {got['crc32c']}, its manifest says {expected['crc32c']} "
                f"(the content changed: bit rot, a bad copy)")
    return None


def first_problem(directory, manifest: dict, names: list[str] | None = None):
    """-> (index in `names`, what is wrong) of the first bad file, or None; `names` defaults
    to every file of the manifest (sorted)."""
    names = sorted(manifest["files"]) if names is None else names
    listed = [(i, n) for i, n in enumerate(names) if n in manifest["files"]]
    found = _each(lambda item: problem(directory, item[1], manifest["files"][item[1]]), listed)
    return next(((i, f) for (i, _), f in zip(listed, found, strict=True) if f), None)


def verify(directory, what: str | None = None, names: list[str] | None = None) -> int | None:
    """Checks the files of `directory`'s manifest (or only `names` of them); -> how many were
    checked, None when there is no manifest. Raises IntegrityError naming the first bad file."""
    manifest = read_manifest(directory, what)
    if manifest is None:
        return None
    found = first_problem(directory, manifest, names)
    if found:
        raise IntegrityError(f"{what or directory} is corrupt: {found[1]}")
    return len(manifest["files"]) if names is None else len(names)
