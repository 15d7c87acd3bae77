"""Bytes on disk or in a bucket: local and gs:// paths with atomic writes (`paths.py`), Orbax
checkpoints of the train state (`checkpoint.py`), the quantized weights file (`quantized.py`)
and content checksums (`integrity.py`). What a whole run directory holds is
gptjax/workdir.py's.

May import: errors, parallel.
"""
