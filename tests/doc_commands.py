"""The commands shown in README.md and docs/*.md, read from the Markdown itself.

A command is a line of a fenced (```bash / ```sh / ```) or indented code block that starts with
`gptjax`, `python launch/...`, `python tests/faults.py`, `bash launch/...`, `launch/...` or
`sbatch` (after optional VAR=value prefixes); `\\` continuations are joined. A command that
cannot run on a laptop says so at its end with a tag in brackets, e.g. `# [cluster]`,
`# [GPU]`, `# [TPU]`, `# [network]`, `# [your checkpoint]`: those are parsed but not run.
`sbatch`, `launch/tpu_pod.sh` (without --dry-run) and commands given a multi-host coordinator
(`JAX_COORDINATOR_ADDRESS=...`) are cluster commands by what they are.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TAGS = ("cluster", "GPU", "TPU", "network", "your checkpoint", "this suite")
_STARTS = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(gptjax\s|python launch/|"
                     r"python tests/faults\.py|bash launch/|launch/|sbatch\s)")
_ENV_ONLY = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S+\s+)+\\$")  # VAR=x VAR=y \ (then the command)
_TAG = re.compile(r"#.*\[([^\]]+)\]\s*$")


@dataclasses.dataclass
class Command:
    doc: str
    line: int
    text: str                 # the command without its comment
    tag: str | None           # why it is not run here, or None

    @property
    def argv(self) -> list[str]:
        """The program's arguments (a pipe or redirection ends them: the shell's business)."""
        words = shlex.split(self.text)
        ends = [i for i, w in enumerate(words) if w in (">", ">>", "|", "&&", ";")]
        return words[:ends[0]] if ends else words

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _code_lines(text: str):
    """(line number, line) of every line inside a fenced or indented code block."""
    fence, prev_blank = None, True
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if fence is None:
                fence = stripped[3:].strip() or "plain"
            else:
                fence = None
            prev_blank = False
            continue
        if fence is not None:
            if fence in ("bash", "sh", "shell", "plain"):
                yield n, line
        elif line.startswith("    ") and prev_blank:
            yield n, line[4:]
            continue  # the following indented lines belong to the same block
        prev_blank = not stripped or (prev_blank and line.startswith("    "))


def _on_a_cluster(text: str) -> bool:
    words = text.split()
    program = next(w for w in words if "=" not in w)
    return (program == "sbatch" or "JAX_COORDINATOR_ADDRESS=" in text
            or (program == "launch/tpu_pod.sh" and "--dry-run" not in words))


def commands() -> list[Command]:
    out = []
    for path in DOCS:
        pending, start = "", 0
        for n, line in _code_lines(path.read_text()):
            if pending:
                pending += " " + line.strip()
            elif _STARTS.match(line.strip()) or _ENV_ONLY.match(line.strip()):
                pending, start = line.strip(), n
            else:
                continue
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            tag = _TAG.search(pending)
            text = pending.split(" #", 1)[0].strip() if " #" in pending else pending
            tag = tag.group(1) if tag else ("cluster" if _on_a_cluster(text) else None)
            out.append(Command(path.name, start, text, tag))
            pending = ""
    return out
