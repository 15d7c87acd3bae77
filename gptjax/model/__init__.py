"""The model: `gpt.py` (the whole GPT, read top to bottom), the fused attention kernels
(`attention.py`: splash on TPU, cuDNN on GPU), scanned <-> per-layer parameter layouts
(`layouts.py`), and parameter / FLOP counts (`flops.py`).

May import: config, errors.
"""
