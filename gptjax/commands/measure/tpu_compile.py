"""`gptjax compile`: the TPU or XLA:GPU compiler's own verdict on a config and a TPU slice or
GPU cluster, without a TPU or GPU (gptjax/performance/aot.py; slices:
gptjax/hardware/tpu_slices.py, GPU clusters: gptjax/hardware/gpu_clusters.py).

    gptjax compile --config configs/gpt3.py:xl --topology v5p-32
    gptjax compile --config configs/gpt3.py:175b --topology v5p-1024 --json
    gptjax compile --config configs/gpt2.py:124m --topology v5e-16 --mesh data=4,fsdp=4
    gptjax compile --config configs/gpt2.py:124m --topology h100-1

It prints per chip what the compiler says of the train step (and eval step) `gptjax train`
would run there: parameters, optimizer state, temporaries, the total against the chip's HBM,
the FLOPs of its matmuls, its collectives, the attention kernels and the compile time. Exit 2
if it does not fit (on GPUs: in the usable share of the GPU's memory).
"""

from __future__ import annotations

import json

from gptjax.commands.args import add_config_arg
from gptjax.errors import UserError
from gptjax.hardware.devices import human_bytes
from gptjax.hardware.gpu_clusters import is_gpu_topology, parse_cluster
from gptjax.hardware.tpu_slices import parse_topology
from gptjax.parallel.sharding import parse_mesh
from gptjax.performance import aot, step_time


def add_args(parser):
    add_config_arg(parser)
    parser.add_argument("--topology", required=True, metavar="TYPE",
                        help="TPU accelerator type as gcloud writes it: v5p-32, v5e-16 "
                             "(v5litepod-16), v6e-256, v4-32; or GEN:AxBxC (docs/tpu.md); or a "
                             "GPU cluster: h100-8, h200-1, a100-8, h100-8x4 = 4 hosts of 8 "
                             "(docs/gpu.md)")
    parser.add_argument("--num-slices", type=int, default=1,
                        help="multislice: this many slices, data-parallel over the DCN")
    parser.add_argument("--mesh", default="",
                        help="axis sizes, e.g. data=1,fsdp=-1 (default: config.mesh)")
    parser.add_argument("--no-eval", action="store_true", help="compile the train step only")
    parser.add_argument("--estimate-time", action="store_true",
                        help="TPU: also estimate the step time and MFU from the compiler's cost "
                             "model, corrected for loops (3 more compiles; an estimate, not a "
                             "measurement: gptjax/performance/step_time.py)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    config = args.config
    if is_gpu_topology(args.topology):
        if args.num_slices != 1:
            raise UserError("--num-slices is for TPU slices; GPU hosts: --topology h100-8xHOSTS")
        s = parse_cluster(args.topology)
    else:
        s = parse_topology(args.topology, num_slices=args.num_slices)
    if args.mesh:
        with config.unlocked():
            config.mesh.update(parse_mesh(args.mesh))
    if args.estimate_time and is_gpu_topology(args.topology):
        raise UserError("--estimate-time needs a TPU slice: XLA:GPU has no cost model")
    report = aot.compile_config(config, s, eval_step=not args.no_eval)
    if args.estimate_time and report["fits"]:
        report["estimate"] = step_time.estimate(config, s, report)
    text = aot.format_report(report)
    if "estimate" in report:
        text += "\n" + step_time.format_estimate(report["estimate"])
    print(json.dumps(report) if args.json else text)
    if not report["fits"]:
        total = report["memory"]["total_bytes"]
        raise UserError(f"{config.name} does not fit {s.name}: {human_bytes(total)} per device of "
                        f"{human_bytes(report['usable_bytes'])} usable")
    return 0
