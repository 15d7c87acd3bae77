"""`gptjax prune`: remove weights (unstructured), attention heads or MLP neurons (structured)
from a trained workdir, into a new one (gptjax/compression/prune.py), then optionally a short
recovery fine-tune.

    gptjax prune --workdir RUN --out RUN-s50 --sparsity 0.5 [--scope layer]
    gptjax prune --workdir RUN --out RUN-h25 --heads 0.25 --neurons 0.25 --score first_order \
        --recover-steps 200
"""

from __future__ import annotations

from gptjax.compression import prune, surgery


def add_args(parser):
    parser.add_argument("--workdir", required=True, help="the trained model to prune")
    parser.add_argument("--out", required=True, help="new workdir for the pruned model")
    parser.add_argument("--sparsity", type=float, default=0.0,
                        help="unstructured: fraction of block matmul weights set to zero")
    parser.add_argument("--scope", choices=prune.SCOPES, default="global",
                        help="unstructured: one threshold for all (global) or per matrix")
    parser.add_argument("--heads", type=float, default=0.0,
                        help="remove this fraction (or count) of each layer's heads")
    parser.add_argument("--neurons", type=float, default=0.0,
                        help="remove this fraction (or count) of each layer's MLP neurons")
    parser.add_argument("--score", choices=prune.SCORES, default="magnitude")
    parser.add_argument("--calibration-batches", type=int, default=8,
                        help="training batches the first_order gradients average over")
    parser.add_argument("--recover-steps", type=int, default=0,
                        help="then fine-tune this many steps on the training data")
    parser.add_argument("--recover-lr", type=float, default=1e-3)
    parser.add_argument("--recover-out", default="",
                        help="workdir of the recovery fine-tune (default: OUT-recovered)")


def run(args):
    pruned = prune.prune_workdir(
        args.workdir, args.out, sparsity=args.sparsity, scope=args.scope, heads=args.heads,
        neurons=args.neurons, score=args.score, calibration_batches=args.calibration_batches)
    print(prune.pruned_line(pruned))
    if args.recover_steps > 0:
        print(surgery.recovered_line(surgery.recover(
            pruned.out, args.recover_out or pruned.out.rstrip("/") + "-recovered",
            steps=args.recover_steps, lr=args.recover_lr, masked=pruned.masked)))
    return 0
