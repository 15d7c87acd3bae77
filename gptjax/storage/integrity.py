"""Content checksums: the one verification mechanism for every artifact gptjax writes
(checkpoint files, token shards, config and tokenizer files).

CRC32C is the checksum Google Cloud Storage keeps for every object (its `crc32c` metadata),
so a file can be checked against its bucket copy without reading it twice; `google-crc32c`
computes it in hardware where the CPU has the instruction.

    digest = integrity.checksum(data)              # "crc32c:1a2b3c4d"
    digest = integrity.file_checksum(path)         # streamed, local or gs://
"""

from __future__ import annotations

import google_crc32c

from gptjax.storage import paths

CHUNK = 16 << 20


def checksum(data: bytes) -> str:
    return f"crc32c:{google_crc32c.value(data):08x}"


def file_checksum(path, chunk: int = CHUNK) -> str:
    """The checksum of a file's bytes, read in bounded chunks."""
    crc = google_crc32c.Checksum()
    with paths.open(path, "rb") as f:
        while block := f.read(chunk):
            crc.update(block)
    return f"crc32c:{int.from_bytes(crc.digest(), 'big'):08x}"
