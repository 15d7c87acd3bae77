"""`gptjax sweep`: train a family of model sizes, then fit and plot their scaling laws.

    gptjax sweep --config configs/scaling.py:shakespeare_isoflop --workdir W   # run + collect
    gptjax sweep --config ... --workdir W --list            # the planned runs
    gptjax sweep --config ... --workdir W --print-commands [shell|slurm|tpu]   # for a cluster
    gptjax sweep --workdir W --run NAME                     # one run (what those lines say)
    gptjax sweep --workdir W --collect [--budget 1e15]      # tables, fits, plots

Layout: W/sweep_config.json (the sweep's config, so every run and `--collect` agree on it),
W/runs/NAME/ (an ordinary `gptjax train` workdir each, plus result.json once finished),
W/results.{csv,md}, W/fits.json and W/*.png (`gptjax/scaling/collect.py`).
Planning is `gptjax/scaling/runs.py`, running `gptjax/scaling/sweep.py`, the cluster launch
lines `gptjax/scaling/cluster.py`.
"""

from __future__ import annotations

from gptjax.commands.args import add_config_arg
from gptjax.scaling import cluster, collect, runs, sweep
from gptjax.storage import paths

APPLIES_OVERRIDES = True  # `--workdir W --config.KEY=VALUE` changes the saved sweep config


def add_args(parser):
    add_config_arg(parser, required=False)
    parser.add_argument("--workdir", required=True, help="sweep directory (runs/NAME/ inside)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print-commands", nargs="?", const="shell", choices=cluster.FORMATS,
                      metavar="FORMAT", help="print the launch lines of the unfinished runs "
                      f"instead of running: {', '.join(cluster.FORMATS)} (default shell)")
    mode.add_argument("--collect", action="store_true",
                      help="only gather finished runs: tables, fits, plots")
    mode.add_argument("--run", metavar="NAME[,NAME]",
                      help="train only these runs of the sweep (no collect)")
    parser.add_argument("--budget", type=float, action="append", default=[], metavar="FLOPS",
                        help="compute budget to predict the optimal N and D for (repeatable)")
    parser.add_argument("--replace-config", action="store_true",
                        help="let --config replace the sweep config stored in the workdir")
    parser.add_argument("--list", action="store_true", help="print the planned runs and exit")


def _print_plan(config, workdir) -> None:
    planned = runs.plan(config, workdir)
    key = runs.n_key(config)
    for r in planned:
        budget = f"budget {r['budget']:.3g}, " if r["budget"] else ""
        print(f"{r['name']:>22}: {r['num_layers']} x {r['d_model']}, "
              f"{r['non_embedding_params']:>11,} non-emb params, {budget}{r['tokens']:>12,} "
              f"tokens ({r['tokens'] / r[key]:.3g}/param), {r['steps']:>6} steps, "
              f"{r['flops']:.3g} FLOPs, lr {r['lr']:.3g}")
    print(f"{len(planned)} runs, {sum(r['flops'] for r in planned):.3g} FLOPs in all")


def run(args):
    workdir = paths.local_dir(args.workdir, "--workdir", "gptjax sweep")
    if args.config is not None:
        config = args.config
        if not args.list:
            runs.save_sweep_config(config, workdir, replace=args.replace_config)
    else:
        config = runs.load_sweep_config(workdir, overrides=args.overrides)
    if args.list:
        _print_plan(config, workdir)
        return 0
    if args.print_commands:
        pending = [r for r in runs.plan(config, workdir)
                   if runs.read_result(r["workdir"]) is None]
        print(cluster.commands(config, workdir, pending, form=args.print_commands))
        return 0
    if args.collect:
        collect.collect(config, workdir, budgets=args.budget)
        return 0
    only = [s for s in args.run.split(",") if s] if args.run else None
    # `--run` is what an isolated run or a cluster job executes: it trains here, in-process.
    results = sweep.run_sweep(config, workdir, only=only, isolate=False if only else None)
    if only:
        return 0 if all(r is not None for r in results) else 1
    if any(r is None for r in results):
        print("sweep: some runs were interrupted; rerun the same command to resume them")
        return 1
    collect.collect(config, workdir, budgets=args.budget)
    return 0
