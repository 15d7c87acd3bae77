"""Smaller or cheaper models from a trained run: pruning (prune.py), dropping layers or unused
vocabulary (trim.py), what they share with quantization and distillation (surgery.py: per-layer
views of the params, derived workdirs, the recovery fine-tune), and the size / quality / speed
report over all of them (report.py, `gptjax compress`)."""
