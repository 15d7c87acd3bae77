"""The command-line tool: one thin module per `gptjax` subcommand (gptjax/cli.py maps the
names to them). A command module parses its arguments (`add_args(parser)`), calls the library with
named arguments and prints (`run(args)`); nothing else in gptjax sees an argparse Namespace.

    train/    what makes a run: train, finetune, distill, sweep, data, plot
    use/      what reads a run: eval, evaluate-tasks, sample, convert, quantize, prune, trim,
              compress
    measure/  what sizes a config without training it: info, plan, compile, bench, bench-decode
    args.py   what they share: the --config flag, a one-line-error parser, integer lists

May import: any part of gptjax but gptjax/cli.py.
"""
