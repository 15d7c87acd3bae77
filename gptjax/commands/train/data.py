"""`gptjax data sources|tokenizer|export|bench|info`: the input pipeline from the command line.

  sources    the registered data sources: what each provides and the config keys it reads
  tokenizer  train (or load) the run's tokenizer and show how it splits a text
  export     tokenize the train / eval splits into a shards directory (numpy-readable, no TF)
  bench      tokens/s the pipeline delivers from pre-tokenized data (numpy and tf.data loaders)
  info       source, tokenizer, split sizes, windows and steps per epoch
"""

from __future__ import annotations

import json
import sys
import time

from gptjax.commands.args import Parser, add_config_arg
from gptjax.data import make_tokenizer, pipeline, registry
from gptjax.data.export import export_shards
from gptjax.performance import data_bench


def add_args(parser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", parser_class=Parser)
    sub.required = True

    p = sub.add_parser("sources", help="the registered data sources (values of data.source)")
    add_config_arg(p, required=False)   # a config file may register more
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("tokenizer", help="train or load the tokenizer; encode a sample text")
    add_config_arg(p)
    p.add_argument("--workdir", default="", help="save the tokenizer here (and reuse it later)")
    p.add_argument("--text", default="To be, or not to be: that is the question.\n",
                   help="text to show encoded")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("export", help="tokenize splits into a shards dir (data.source=shards)")
    add_config_arg(p)
    p.add_argument("--out", required=True, help="directory to write (created)")
    p.add_argument("--workdir", default="", help="take (or save) the tokenizer here")
    p.add_argument("--splits", default="", help="comma-separated (default: train and eval split)")
    p.add_argument("--worker", type=int, default=0,
                   help="this job's part of each split's documents (0..N-1)")
    p.add_argument("--num-workers", type=int, default=1,
                   help="jobs tokenizing the splits together, each with its --worker")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench", help="tokens/s delivered from pre-tokenized data")
    add_config_arg(p)
    p.add_argument("--workdir", default="")
    p.add_argument("--loader", default="both", choices=("both", "numpy", "tf"))
    p.add_argument("--batches", type=int, default=300, help="batches timed per loader")
    p.add_argument("--processes", type=int, default=1,
                   help="read the rows of one process of this many (what each host reads)")
    p.add_argument("--prepare", action="store_true",
                   help="also time one preparation worker tokenizing its part of the train split")
    p.add_argument("--num-workers", type=int, default=1,
                   help="--prepare: the worker's part is 1/N of the split")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("info", help="source, tokenizer, split sizes, steps per epoch")
    add_config_arg(p)
    p.add_argument("--workdir", default="")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    return {"sources": _sources, "tokenizer": _tokenizer, "export": _export, "bench": _bench,
            "info": _info}[args.data_command](args)


def _print(args, result: dict, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(lines))


def _splits(config, text: str) -> list[str]:
    if text:
        return [s.strip() for s in text.split(",") if s.strip()]
    return [s for s in (config.data.train_split, config.data.eval_split) if s]


def _sources(args) -> int:
    result, lines = {}, []
    for name in registry.names():
        source = registry.get(name)
        result[name] = {"help": source.help, "provides": source.provides,
                        "keys": list(source.keys), "required": list(source.required)}
        keys = f" [data.{', data.'.join(source.keys)}]" if source.keys else ""
        lines.append(f"{name:10s} {source.provides:9s} {source.help}{keys}")
    _print(args, result, lines)
    return 0


def _tokenizer(args) -> int:
    config = args.config
    start = time.time()
    tok = make_tokenizer(config, args.workdir or None)
    ids = tok.encode(args.text)
    pieces = [tok.decode([i]) for i in ids]
    result = {"kind": tok.kind, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
              "workdir": args.workdir or None, "ids": ids,
              "round_trip": tok.decode(ids) == args.text,
              "seconds": round(time.time() - start, 2)}
    _print(args, result, [
        f"tokenizer: {tok.kind}, vocab_size={tok.vocab_size}, eos_id={tok.eos_id}"
        + (f", saved in {args.workdir}" if args.workdir else ""),
        f"{len(ids)} tokens: {pieces!r}",
        f"round trip: {result['round_trip']}"])
    return 0


def _export(args) -> int:
    out, written, vocab = export_shards(args.config, args.out, args.workdir or None,
                                        _splits(args.config, args.splits), args.worker,
                                        args.num_workers)
    result = {"out": out, "splits": written, "vocab_size": vocab, "worker": args.worker,
              "num_workers": args.num_workers}
    if all(v is not None for v in written.values()):
        lines = [f"wrote {out}: " + ", ".join(f"{k}={v} tokens" for k, v in written.items()),
                 f"train with --config.data.source=shards --config.data.shards_dir={out}"]
    else:
        lines = [f"wrote part {args.worker + 1}/{args.num_workers} of {out}; the worker that "
                 "finishes last writes each split's index (running any worker again does too)"]
    _print(args, result, lines)
    return 0


def _bench(args) -> int:
    result = data_bench.bench(args.config, args.loader, args.batches, args.workdir or None,
                              args.processes)
    lines = [f"{result['machine']}; batch {result['batch_size']} x {result['seq_len']}, "
             f"{result['split_tokens']} tokens in the training split; the rows of process 0 "
             f"of {args.processes}"]
    for loader in ("numpy", "tf"):
        if loader in result:
            r = result[loader]
            read = (f"; {r['ranges_per_batch']:.1f} ranges, {r['bytes_per_batch']} bytes read "
                    "per batch" if "ranges_per_batch" in r else "")
            lines.append(f"{loader:6s}: {r['tokens_per_s'] / 1e6:8.2f} M tokens/s "
                         f"({r['batches_per_s']:.0f} batches/s{read})")
    if args.prepare:
        p = result["prepare"] = data_bench.prepare(args.config, args.workdir or None,
                                                   args.num_workers)
        lines.append(f"prepare: {p['tokens_per_s'] / 1e6:.2f} M tokens/s per worker "
                     f"({p['tokenizer']}; part 1/{p['num_workers']}: {p['documents']} "
                     f"documents, {p['tokens']} tokens in {p['seconds']}s)")
    _print(args, result, lines)
    sys.stdout.flush()
    return 0


def _info(args) -> int:
    config = args.config
    d = config.data
    source = registry.of(config)
    tok = make_tokenizer(config, args.workdir or None)
    result = {"source": d.source, "tokenizer": tok.kind, "vocab_size": tok.vocab_size,
              "eos_id": tok.eos_id, "splits": {}}
    lines = [f"source: {source.describe(config)}",
             f"tokenizer: {tok.kind}, vocab_size={tok.vocab_size}, eos_id={tok.eos_id}"]
    if source.batches is None:
        store = pipeline.token_store(config, tok, args.workdir or None)
        for split in _splits(config, ""):
            tokens = pipeline.split_tokens(config, tok, split, args.workdir or None)
            meta = store.meta(split)
            w = pipeline.Windows(tokens.size, d.seq_len, d.seed, d.shuffle,
                                 f"split {split!r}").num_windows
            steps = w / config.train.batch_size
            shards = len(meta.get("shards", [meta]))   # a single-file split: one
            result["splits"][split] = {"tokens": int(tokens.size),
                                       "documents": meta["num_documents"], "windows": w,
                                       "steps_per_epoch": round(steps, 2), "shards": shards}
            lines.append(f"{split}: {tokens.size} tokens, {meta['num_documents']} documents "
                         f"in {shards} shards, {w} windows of {d.seq_len + 1}, {steps:.1f} "
                         f"steps of batch {config.train.batch_size} per epoch")
        result["store"] = store.directory
        lines.append(f"token store: {store.directory}")
    _print(args, result, lines)
    return 0
