"""Evaluating trained models on tasks (docs/evaluation.md): the scoring primitives, in-context
few-shot tasks (`gptjax evaluate-tasks`) and the lm-evaluation-harness model class.

    scoring.py    log-likelihoods, rolling log-likelihoods and greedy generation on a workdir
    incontext.py  task files, k-shot prompts, their metrics, harness YAML
    harness.py    `python -m gptjax.evaluation.harness`: lm_eval with the `gptjax` model
"""
