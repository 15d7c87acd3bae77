"""Evaluating trained models (docs/evaluation.md): held-out loss of a finished run (`gptjax
eval`), the scoring primitives, in-context few-shot tasks (`gptjax evaluate-tasks`) and the
lm-evaluation-harness model class.

    heldout.py    held-out loss / perplexity / bits per char of a workdir, quantized or not

    scoring.py    log-likelihoods, rolling log-likelihoods and greedy generation on a workdir
    incontext.py  task files, k-shot prompts, their metrics, harness YAML
    harness.py    `python -m gptjax.evaluation.harness`: lm_eval with the `gptjax` model
"""
