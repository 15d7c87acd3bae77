"""Bytes on disk or in a bucket: local and gs:// paths with atomic writes (`paths.py`), Orbax
checkpoints of the train state (`checkpoint.py`), and the quantized weights file
(`quantized.py`). What a whole run directory holds is gptjax/workdir.py's.

May import: errors, parallel.
"""
