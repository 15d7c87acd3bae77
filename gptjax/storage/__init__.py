"""Bytes on disk or in a bucket: local and gs:// paths with atomic writes (`paths.py`), Orbax
checkpoints of the train state (`checkpoint.py`), the quantized weights file (`quantized.py`),
content checksums (`integrity.py`) and files read in place by memory map or byte ranges
(`ranged.py`). What a whole run directory holds is
gptjax/workdir.py's.

May import: errors, parallel.
"""
