"""The GCS emulator of tests/test_gcs.py (tests/gcs_emulator.py on 127.0.0.1) and what the tests
read back from its buckets, over its HTTP API: nothing here goes through gcsfs or tensorstore,
the clients under test."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

BUCKET = "runs"         # exists
DENIED = "locked"       # every request about it answers 403 Forbidden
MISSING = "no-such-bucket"
HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """A running tests/gcs_emulator.py; `env()` points gptjax's clients at it."""

    def __init__(self):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "gcs_emulator.py"), "--port", str(self.port),
             "--bucket", BUCKET, "--denied", DENIED],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"the GCS emulator did not start: {line!r}")

    def env(self) -> dict:
        """gcsfs and etils (STORAGE_EMULATOR_HOST), tensorstore (TENSORSTORE_GCS_HTTP_URL), no
        credential lookups (anonymous gcsfs, a fixed tensorstore token, no metadata server):
        nothing leaves 127.0.0.1."""
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "FSSPEC_GS_TOKEN": "anon", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "NO_GCE_CHECK": "True",
                "GCE_METADATA_ROOT": "127.0.0.1:9", "GCE_METADATA_HOST": "127.0.0.1:9",
                "GCE_METADATA_IP": "127.0.0.1:9", "EPATH_USE_TF": "false"}

    def _get(self, path: str, **query) -> bytes:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.read()

    def buckets(self) -> list[str]:
        return [b["name"] for b in json.loads(self._get("/storage/v1/b")).get("items", [])]

    def objects(self, prefix: str = "") -> list[str]:
        """Names of the objects under `prefix` in the bucket `runs`."""
        names, token = [], None
        while True:
            query = {"prefix": prefix, **({"pageToken": token} if token else {})}
            page = json.loads(self._get(f"/storage/v1/b/{BUCKET}/o", **query))
            names += [o["name"] for o in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(names)

    def read(self, name: str) -> bytes:
        return self._get(f"/download/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, '')}",
                         alt="media")

    def write(self, name: str, data: bytes) -> None:
        """Replaces (or creates) object `name` in the bucket `runs`: a simple media upload."""
        url = (f"{self.url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name="
               f"{urllib.parse.quote(name, '')}")
        req = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()

    def crc32c(self, name: str) -> str:
        """The object's crc32c metadata (base64 of the big-endian CRC32C) as gptjax writes it."""
        meta = json.loads(self._get(f"/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, '')}"))
        return f"crc32c:{int.from_bytes(base64.b64decode(meta['crc32c']), 'big'):08x}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def committed_steps(gcs: Emulator, prefix: str) -> list[int]:
    """Checkpoint steps under gs://runs/PREFIX with Orbax's commit marker (complete ones)."""
    names = gcs.objects(f"{prefix}/checkpoints/")
    return sorted(int(n.split("/")[-2]) for n in names
                  if n.endswith("/commit_success.txt") and n.split("/")[-2].isdigit()
                  and n.count("/") == prefix.count("/") + 3)


def step_objects(gcs: Emulator, prefix: str, step: int) -> list[str]:
    return gcs.objects(f"{prefix}/checkpoints/{step}/")


def read_losses(gcs: Emulator, prefix: str) -> dict[int, float]:
    out = {}
    for line in gcs.read(f"{prefix}/metrics.jsonl").decode().splitlines():
        r = json.loads(line)
        if r.get("split") == "train":
            assert r["step"] not in out, f"step {r['step']} logged twice"
            out[r["step"]] = float(r["loss"])
    return out


def local_files(*roots: Path) -> list[str]:
    """Every file under `roots` (to show that a gs:// run wrote nothing local)."""
    return sorted(str(p) for root in roots for p in Path(root).rglob("*") if p.is_file())


def children(pid: int) -> dict[int, int]:
    """JAX process id -> OS pid of the direct children of `pid` (launch/multiprocess.py's)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != pid:
                continue
            env = dict(kv.split("=", 1) for kv in (d / "environ").read_bytes().decode(
                errors="replace").split("\0") if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if "JAX_PROCESS_ID" in env:
            out[int(env["JAX_PROCESS_ID"])] = int(d.name)
    return out


def set_env(env: dict) -> dict:
    """Sets `env` in this process (in-process reads of the bucket); -> the old values."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return old


def restore_env(old: dict) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
