"""Training: the train state (`state.py`), AdamW and its schedule (`optim.py`), the one loss
(`loss.py`), the jitted train and eval steps (`steps.py`), the step loop and its hooks
(`loop.py`, `hooks.py`), what a run trains on (`recipes.py`, `finetune.py`, `distill.py`),
held-out evaluation (`evaluation.py`), and `train(config, workdir, recipe)` (`train.py`).

May import: config, data, errors, hardware, inference, metrics, model, parallel, storage, workdir.
"""
