"""`gptjax compress`: one report of size vs quality vs speed over compression methods
(gptjax/compression/report.py).

    gptjax compress --workdir RUN --out docs/compression [--methods float,int8,...]
"""

from __future__ import annotations

import functools
import time

from gptjax.commands.args import int_list
from gptjax.compression import report


def add_args(parser):
    parser.add_argument("--workdir", required=True, help="the trained model to compress")
    parser.add_argument("--out", required=True, help="where results.md/.csv and the plot go")
    parser.add_argument("--methods", default=",".join(report.METHODS),
                        help=f"comma-separated, from: {', '.join(report.METHODS)}")
    parser.add_argument("--scratch", default="",
                        help="where the variants' workdirs go (default: WORKDIR-compress)")
    parser.add_argument("--recover-steps", type=int, default=100,
                        help="recovery fine-tune of pruned / trimmed variants (0 = none)")
    parser.add_argument("--recover-lr", type=float, default=1e-3)
    parser.add_argument("--distill-steps", type=int, default=200)
    parser.add_argument("--eval-batches", type=int, default=20)
    parser.add_argument("--decode-batches", default="1,16")
    parser.add_argument("--decode-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed decodes per batch size; the fastest counts")
    parser.add_argument("--tasks", default="",
                        help="comma-separated evaluation tasks (gptjax/evaluation/incontext.py: "
                             "directories or names under ./tasks/, e.g. austen_nextsent) scored "
                             "on every variant (default: none)")
    parser.add_argument("--shots", default="0", help="comma-separated shot counts of --tasks")
    parser.add_argument("--task-limit", type=int, default=None,
                        help="score only the first N eval examples of each task")


def run(args):
    t0 = time.time()
    result = report.compress(
        args.workdir, args.out,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        scratch=args.scratch, tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
        log=functools.partial(print, flush=True), shots=int_list(args.shots, "--shots"),
        recover_steps=args.recover_steps, recover_lr=args.recover_lr,
        distill_steps=args.distill_steps, eval_batches=args.eval_batches,
        decode_batches=int_list(args.decode_batches, "--decode-batches", minimum=1),
        decode_tokens=args.decode_tokens, repeats=args.repeats, task_limit=args.task_limit)
    print(result.table())
    print(f"done in {time.time() - t0:.0f}s -> {', '.join(result.written)}")
    return 0
