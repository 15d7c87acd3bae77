"""Chat messages -> one prompt for a model that knows no chat format (docs/inference.md).

`base` (a pretrained run): one line per message, then the assistant's turn, and generation stops
where the model starts the user's next line:

    System: You are terse.
    User: Who wrote Hamlet?
    Assistant:

`finetune` (a run fine-tuned on prompt/response pairs, gptjax/training/finetune.py): the
messages' contents concatenated in order, exactly as training saw `prompt + response` (previous
turns are earlier pairs); generation stops at EOS, as fine-tuning taught it.
`auto`: finetune when the run's config names a fine-tuning file, else base.
"""

from __future__ import annotations

from gptjax.errors import UserError

TEMPLATES = ("auto", "base", "finetune")
ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def choose(template: str, config) -> str:
    if template not in TEMPLATES:
        raise UserError(f"--chat-template {template!r}: choose one of {', '.join(TEMPLATES)}")
    if template == "auto":
        return "finetune" if config.get("finetune", {}).get("train_file") else "base"
    return template


def render(messages: list[tuple[str, str]], template: str) -> tuple[str, tuple[str, ...]]:
    """[(role, text)] -> (prompt, stop strings the template adds)."""
    if template == "finetune":
        return "".join(text for _, text in messages), ()
    lines = [f"{ROLES[role]}: {text}" for role, text in messages]
    return "\n".join(lines + ["Assistant:"]), ("\nUser:", "\nSystem:")
