"""`gptjax plan`: bytes per device of a config on a mesh, and whether it fits the device
(gptjax/performance/memory_plan.py; on a TPU generation with libtpu installed, the TPU
compiler's own verdict, and on h100 / h200 / a100 with the CUDA plugin installed XLA:GPU's,
gptjax/performance/aot.py).

    gptjax plan --config configs/gpt3.py:2.7b --mesh data=1,fsdp=8,tensor=1 --device h100
"""

from __future__ import annotations

import json

from gptjax.commands.args import add_config_arg
from gptjax.errors import UserError
from gptjax.hardware.devices import DEVICES, human_bytes
from gptjax.parallel.sharding import parse_mesh
from gptjax.performance import aot, memory_plan


def add_args(parser):
    add_config_arg(parser)
    parser.add_argument("--mesh", default="",
                        help="axis sizes, e.g. data=1,fsdp=8,tensor=1 (default: config.mesh; "
                             "-1 = the rest of --num-devices)")
    parser.add_argument("--num-devices", type=int, default=0,
                        help="devices in the job, to resolve a -1 axis (default: the product "
                             "of the fixed axes)")
    parser.add_argument("--device", default="h100", help=f"one of {', '.join(DEVICES)}")
    parser.add_argument("--measure", action="store_true",
                        help="also compile the real train step here and print XLA's measured "
                             "peak (uses config.mesh on the local devices)")
    parser.add_argument("--estimate", action="store_true",
                        help="the closed-form estimate only, even where libtpu or the CUDA "
                             "plugin is installed (by default plan then asks the compiler)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    config = args.config
    mesh = parse_mesh(args.mesh) if args.mesh else {k: int(config.mesh[k])
                                                    for k in ("data", "fsdp", "tensor")}
    if args.num_devices < 0:
        raise UserError(f"--num-devices={args.num_devices} must be positive")
    p = memory_plan.plan(config, mesh=mesh, device=args.device,
                         num_devices=args.num_devices or None)
    result = p.as_dict()
    if args.measure:
        if args.mesh:
            with config.unlocked():
                for k, v in p.mesh.items():
                    config.mesh[k] = v
        result["measured"] = memory_plan.measure(config)
        if args.device != "cpu":
            print("gptjax plan: note: --measure compiles for the local devices; compare it "
                  "with --device cpu on a CPU machine", flush=True)
    report = None if args.estimate else memory_plan.compiler_report(config, p)
    if report is not None:  # libtpu / the CUDA plugin is here: the compiler's numbers
        which = "XLA:GPU" if report.get("platform") == "gpu" else "TPU"
        result.update(source=f"{which} compiler ({report['topology']})", compiler=report,
                      estimate_bytes=result["total_bytes"],
                      total_bytes=report["memory"]["total_bytes"], fits=report["fits"])
    if args.json:
        print(json.dumps(result))
        return 0
    if report is not None:
        print(aot.format_report(report))
        print(f"  (closed-form estimate: {human_bytes(result['estimate_bytes'])}; --estimate "
              f"prints it in full)")
        return 0
    print(memory_plan.format_plan(p, measured=result.get("measured")))
    return 0
