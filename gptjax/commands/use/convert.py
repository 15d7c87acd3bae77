"""`gptjax convert import|export`: Hugging Face GPT-2 weights into a workdir and back
(gptjax/inference/hf_gpt2.py); an export carries the run's tokenizer
(gptjax/data/hf_tokenizer.py), so transformers loads the directory as is."""

from __future__ import annotations

import argparse

from gptjax.inference.hf_gpt2 import export_workdir, import_to_workdir


def add_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", metavar="import|export", required=True)
    imp = sub.add_parser("import", help="HF GPT-2 checkpoint -> gptjax workdir")
    imp.add_argument("--hf", required=True, metavar="PATH|NAME",
                     help="HF checkpoint directory, weights file, or hub name (e.g. gpt2)")
    imp.add_argument("--workdir", required=True, help="gptjax workdir to write")
    imp.add_argument("--base-config", default="configs/gpt2.py",
                     help="config file whose non-model sections the workdir gets")
    exp = sub.add_parser("export", help="gptjax workdir -> HF GPT-2 directory")
    exp.add_argument("--workdir", required=True)
    exp.add_argument("--out", required=True, help="directory for config.json, "
                     "model.safetensors and the run's tokenizer (tokenizer.json)")


def run(args) -> int:
    if args.direction == "import":
        info = import_to_workdir(args.hf, args.workdir, args.base_config)
        print(f"imported {args.hf} -> {info['workdir']} ({info['layers']} layers, d_model "
              f"{info['d_model']}, vocab {info['vocab_size']})")
        return 0
    step, tokenizer = export_workdir(args.workdir, args.out)
    print(f"exported {args.workdir} (step {step}) -> {args.out}/model.safetensors"
          + (f" + tokenizer.json ({tokenizer} tokenizer)" if tokenizer else
             " (no tokenizer: the workdir holds token ids only)"))
    return 0
