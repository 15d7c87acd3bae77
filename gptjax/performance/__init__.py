"""How fast and how big, measured or compiled: the per-device memory planner
(`memory_plan.py`), ahead-of-time compiles of the train step for TPU slices (`aot.py`), and
benchmarks of the real train step and of KV-cache decoding (`step_bench.py`, `decode_bench.py`).

May import: config, data, errors, hardware, inference, metrics, model, parallel, storage,
training, workdir.
"""
