"""`gptjax checkpoints --workdir W [--verify]`: a run's checkpoints with step, time, size and
state (verified / corrupt / incomplete / unchecked / no manifest), and those moved aside to
W/checkpoints_corrupt/. Exit status 1 when the newest checkpoint is corrupt or incomplete."""

from __future__ import annotations

import json
import time

from gptjax.storage import checkpoint


def add_args(parser):
    parser.add_argument("--workdir", required=True, help="a training workdir (local or gs://)")
    parser.add_argument("--verify", action="store_true",
                        help="read every file back against the checkpoint's manifest")
    parser.add_argument("--json", action="store_true", help="one JSON object per checkpoint")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"


def run(args):
    rows = checkpoint.inventory(args.workdir, verify=args.verify)
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(f"{'step':>8}  {'saved (UTC)':19}  {'size':>9}  state")
        for r in rows:
            state = f"{r['state']}: {r['detail']}" if r["detail"] else r["state"]
            print(f"{r['step']:>8}  {_when(r['time']):19}  {_size(r['size']):>9}  {state}")
        if not rows:
            print("no checkpoints")
        for name in checkpoint.moved_aside(args.workdir):
            print(f"moved aside (corrupt): {checkpoint.CORRUPT_DIR}/{name}")
        if rows and any(r["state"] == "no manifest" for r in rows):
            print("no manifest: written by a gptjax from before checkpoint manifests; restored "
                  "unverified")
    return 1 if rows and rows[-1]["state"] in ("corrupt", "incomplete") else 0
