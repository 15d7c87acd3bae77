"""lm-evaluation-harness on gptjax checkpoints: the `gptjax` model class.

    python -m gptjax.evaluation.harness --model gptjax --model_args workdir=runs/quickstart \\
        --tasks lambada_openai [--include_path DIR] [--batch_size 32] [any lm_eval flag]

`python -m gptjax.evaluation.harness ARGS` is `lm_eval ARGS` with the `gptjax` model
registered first: the harness finds models only in its own registry (it has no plugin entry
point), so a plain `lm_eval --model gptjax` cannot know this class unless something imports
this module. From Python, `import gptjax.evaluation.harness` and then
`lm_eval.simple_evaluate(model="gptjax", ...)`.

model_args: workdir (required), step (default: newest), batch_size (rows per scoring batch,
default 32), stride (rolling windows' advance, default max_seq_len as in the harness).
The three request types run on gptjax/evaluation/scoring.py; the harness's own tokenisation
rules (trailing spaces move into the continuation, an empty context is the EOS/prefix token,
left-truncation to the model's window) are the scorer's. Needs the optional extra
`pip install 'gptjax[eval]'`.
"""

from __future__ import annotations

import os
import sys

import lm_eval.models  # noqa: F401  the built-in models first: the registry imports them
from lm_eval.api.model import LM  # only while it is empty, so registering ours first would
from lm_eval.api.registry import register_model  # hide them (e.g. --model hf)

from gptjax.errors import UserError
from gptjax.evaluation import scoring

DEFAULT_MAX_GEN_TOKS = 256  # the harness's default for generate_until tasks


def _batch_size(value, default: int = 32) -> int:
    """The harness passes batch_size as given on its command line ('auto', '16', 16)."""
    text = str(value)
    return int(text) if text.isdigit() and int(text) > 0 else default


@register_model("gptjax")
class GPTJaxLM(LM):
    """A gptjax workdir as an lm-evaluation-harness model."""

    def __init__(self, workdir: str, step: int | None = None, batch_size=32,
                 stride: int | None = None, **unused):
        super().__init__()
        self.scorer = scoring.load_scorer(workdir, None if step is None else int(step),
                                          _batch_size(batch_size))
        self.stride = None if stride is None else int(stride)
        self.workdir = workdir

    @property
    def tokenizer_name(self) -> str:
        return f"gptjax:{self.scorer.tokenizer.kind}:{self.workdir}"

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self.scorer.loglikelihood([r.args for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self.scorer.loglikelihood_rolling([r.args[0] for r in requests], self.stride)

    def generate_until(self, requests, disable_tqdm: bool = False):
        """Sampled when the task asks for do_sample with a temperature > 0 (filtered by its
        top_k / top_p), else greedy; requests with different sampling settings run as separate
        groups. max_gen_toks: see `Scorer.generate_until` (capped only by learned positions)."""
        groups: dict[tuple, list[int]] = {}
        settings = []
        for i, request in enumerate(requests):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            settings.append((context, until, int(kwargs.get("max_gen_toks",
                                                            DEFAULT_MAX_GEN_TOKS))))
            groups.setdefault(sampling(kwargs), []).append(i)
        out = [""] * len(requests)
        for (temperature, top_k, top_p), members in groups.items():
            texts = self.scorer.generate_until([settings[i] for i in members], temperature,
                                               top_k=top_k, top_p=top_p)
            for i, text in zip(members, texts, strict=True):
                out[i] = text
        return out


def sampling(kwargs: dict) -> tuple[float, int, float]:
    """A task's generation kwargs -> (temperature, top_k, top_p); (0, 0, 1) is greedy. None
    (a YAML `top_k: null`) means off."""
    temperature = float(kwargs.get("temperature") or 0.0)
    if not kwargs.get("do_sample", False) or temperature <= 0:
        return 0.0, 0, 1.0
    top_p = kwargs.get("top_p")
    return temperature, int(kwargs.get("top_k") or 0), 1.0 if top_p is None else float(top_p)


def main(argv: list[str] | None = None) -> int:
    """`lm_eval ARGS` with the gptjax model registered (this module's import did that).

    The harness bootstraps standard errors in forked worker processes unless
    DISABLE_MULTIPROC is set; forking a process that runs JAX can deadlock, so it is set."""
    from lm_eval.__main__ import cli_evaluate
    os.environ.setdefault("DISABLE_MULTIPROC", "1")
    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except UserError as e:
        print(f"gptjax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
