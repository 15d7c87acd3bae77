"""What a run reports: `writer.py` (metrics.jsonl, TensorBoard events, W&B when asked, the
terminal progress line), `curves.py` (the loss curves of `gptjax plot`), and `plotting.py`, the
one matplotlib helper every figure in gptjax is drawn with.

May import: errors, storage.
"""
