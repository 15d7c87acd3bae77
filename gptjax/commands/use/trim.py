"""`gptjax trim`: a smaller model by dropping whole layers or unused vocabulary
(gptjax/compression/trim.py), then optionally a short recovery fine-tune.

    gptjax trim --workdir RUN --out RUN-l4 --drop-layers 2 [--recover-steps 200]
    gptjax trim --workdir RUN --out RUN-v --vocab
"""

from __future__ import annotations

from gptjax.compression import surgery, trim


def add_args(parser):
    parser.add_argument("--workdir", required=True, help="the trained model to trim")
    parser.add_argument("--out", required=True, help="new workdir for the trimmed model")
    parser.add_argument("--drop-layers", type=int, default=0,
                        help="drop this many of the least important layers")
    parser.add_argument("--vocab", action="store_true",
                        help="keep only the tokens that occur in the data (char tokenizers)")
    parser.add_argument("--eval-batches", type=int, default=4,
                        help="held-out batches the layer importance is measured on (the new "
                             "run keeps the source's train.eval_batches)")
    parser.add_argument("--recover-steps", type=int, default=0,
                        help="then fine-tune this many steps on the training data")
    parser.add_argument("--recover-lr", type=float, default=1e-3)


def run(args):
    trimmed = trim.trim_workdir(args.workdir, args.out, drop_layers=args.drop_layers,
                                vocab=args.vocab, eval_batches=args.eval_batches)
    print(trim.trimmed_line(trimmed))
    if args.recover_steps > 0:
        print(surgery.recovered_line(surgery.recover(
            trimmed.out, trimmed.out.rstrip("/") + "-recovered", steps=args.recover_steps,
            lr=args.recover_lr, masked=False)))
    return 0
