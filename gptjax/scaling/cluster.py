"""`gptjax sweep --print-commands [shell|slurm|tpu]`: the sweep's runs as cluster jobs.

Every form runs the same thing per run, `gptjax sweep --workdir W --run NAME`, which reads the
sweep's config from W/sweep_config.json, trains (or resumes) that one run and writes its
result.json. W must therefore be storage that every job sees. Finished runs are left out, so
printing again after a partial sweep gives only what is left; `--collect` is run once at the end.

- shell: one command per line (pipe into `parallel`, `xargs -P`, or run them by hand).
- slurm: a job-array script, one array task per run; the runs are listed one per line.
    gptjax sweep --workdir W --print-commands slurm > sweep.sbatch && sbatch sweep.sbatch
  `sweep.slurm_args` adds sbatch options (`--partition=gpu --gres=gpu:1 --time=04:00:00`).
- tpu: one `gcloud compute tpus queued-resources create` line per run; each TPU VM runs its
  run as a startup script (on every worker of a multi-host slice) and can be deleted when
  result.json appears. `sweep.tpu_args` holds the gcloud options (zone, accelerator type,
  runtime version, --spot, ...). gcloud splits --metadata values at commas, so keep them out
  of `sweep.launch_setup` (call a script on the image instead).
`sweep.launch_setup` is shell run first in each job: activate an environment, cd to a clone.
"""

from __future__ import annotations

import re
import shlex

FORMATS = ("shell", "slurm", "tpu")


def _run_line(workdir: str, name: str) -> str:
    return f"gptjax sweep --workdir {shlex.quote(workdir)} --run {shlex.quote(name)}"


def _with_setup(config, line: str) -> str:
    setup = str(config.sweep.launch_setup).strip()
    return f"{setup} && {line}" if setup else line


def shell(config, workdir: str, runs: list[dict]) -> list[str]:
    return [_with_setup(config, _run_line(workdir, r["name"])) for r in runs]


def slurm(config, workdir: str, runs: list[dict]) -> list[str]:
    job = re.sub(r"[^A-Za-z0-9_.-]+", "-", config.name)
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job}",
             f"#SBATCH --array=0-{len(runs) - 1}",
             f"#SBATCH --output={workdir}/slurm/%A_%a.out"]
    lines += [f"#SBATCH {arg}" for arg in shlex.split(str(config.sweep.slurm_args))]
    lines += ["set -euo pipefail", f"mkdir -p {shlex.quote(workdir)}/slurm", "RUNS=("]
    lines += [f"  {shlex.quote(r['name'])}" for r in runs]
    lines += [")", str(config.sweep.launch_setup).strip() or "# (sweep.launch_setup: none)",
              f"gptjax sweep --workdir {shlex.quote(workdir)} "
              f'--run "${{RUNS[$SLURM_ARRAY_TASK_ID]}}"']
    return lines


def tpu_name(config, run_name: str) -> str:
    """A queued-resource / node id: lower-case letters, digits and hyphens, from a letter."""
    name = re.sub(r"[^a-z0-9]+", "-", f"{config.name}-{run_name}".lower()).strip("-")
    return ("r-" + name if not name[:1].isalpha() else name)[:63].rstrip("-")


def tpu(config, workdir: str, runs: list[dict]) -> list[str]:
    args = str(config.sweep.tpu_args).strip() or \
        "--zone=ZONE --accelerator-type=TYPE --runtime-version=VERSION"
    lines = []
    for r in runs:
        name = tpu_name(config, r["name"])
        script = _with_setup(config, _run_line(workdir, r["name"]))
        lines.append(f"gcloud compute tpus queued-resources create {name} --node-id={name} "
                     f"{args} --metadata={shlex.quote('startup-script=' + script)}")
    return lines


def commands(config, workdir: str, runs: list[dict], form: str = "shell") -> str:
    """The launch lines of `runs` in one of FORMATS, then how to collect."""
    if not runs:
        return f"# every run has finished: gptjax sweep --workdir {workdir} --collect"
    lines = {"shell": shell, "slurm": slurm, "tpu": tpu}[form](config, workdir, runs)
    return "\n".join(lines + [f"# afterwards: gptjax sweep --workdir {workdir} --collect"])
