"""What a compiled XLA program does, read from its optimized HLO text (`compiled.as_text()`):
matmul FLOPs and collectives per device, with every loop body counted as often as it runs.

    stats = hlo.analyze(compiled.as_text())
    stats["matmul_flops"], stats["collectives"]   # {'all-gather': {'count', 'bytes'}, ...}

`compiled.cost_analysis()` counts the body of a `while` loop (a scanned layer stack, gradient
accumulation, the chunked loss) once; here each body is weighted by its trip count, read from
the loop's condition (`counter < N`). Matmuls are XLA's `dot` and `convolution` instructions
(TPU lowers dots to convolutions), counted the way XLA's cost analysis counts them: 2 FLOPs per
multiply-add over the window positions that fall inside the input. Custom calls (Pallas
kernels such as splash attention) are opaque to XLA: they are counted, not costed.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "f8e4m3fn": 1,
               "f8e5m2": 1, "s4": 1, "u4": 1}

_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)(?<=[\]\})])\s([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")
_CALLS = re.compile(r"(?:calls|body|to_apply|branch_computations)=\{?(%[\w.\-]+(?:,\s*%[\w.\-]+)*)")


def _dims(shape: str) -> list[int]:
    m = _ARRAY.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _bytes(shape: str) -> int:
    return sum(DTYPE_BYTES.get(t, 4) * math.prod(int(d) for d in dims.split(",") if d)
               for t, dims in _ARRAY.findall(shape))


def parse(text: str) -> tuple[dict, str]:
    """-> ({computation: [(name, shape, opcode, rest)]}, entry computation name)."""
    comps, entry, current = {}, None, None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = comps.setdefault(header.group(1), [])
            if line.startswith("ENTRY"):
                entry = header.group(1)
            continue
        m = _INSTR.match(line) if current is not None else None
        if m:
            current.append(m.groups())
    return comps, entry


def _conv_flops(out_shape: str, rest: str, shapes: dict) -> float:
    """2 x output batch x output features x input features x valid window positions."""
    operands = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", rest)
    if len(operands) < 2 or not labels:
        return 0.0
    lhs, rhs, out = (_dims(shapes.get(operands[0], "")), _dims(shapes.get(operands[1], "")),
                     _dims(out_shape))
    lhs_l, rhs_l, out_l = labels.groups()
    if not (lhs and rhs and out):
        return 0.0
    window = re.search(r"window=\{([^}]*)\}", rest)
    fields = dict(f.split("=", 1) for f in window.group(1).split()) if window else {}
    size = [int(x) for x in fields["size"].split("x")] if "size" in fields else []
    pads = [tuple(int(p) for p in x.split("_")) for x in fields.get("pad", "").split("x") if x]
    strides = [int(x) for x in fields.get("stride", "").split("x") if x]
    positions = 1
    for d in range(len(size)):
        n, m = lhs[lhs_l.index(str(d))], out[out_l.index(str(d))]
        lo = pads[d][0] if d < len(pads) else 0
        stride = strides[d] if d < len(strides) else 1
        positions *= sum(1 for o in range(m) for k in range(size[d])
                         if 0 <= o * stride - lo + k < n)
    return 2.0 * out[out_l.index("b")] * out[out_l.index("f")] * rhs[rhs_l.index("i")] * positions


def _dot_flops(out_shape: str, rest: str, shapes: dict) -> float:
    operands = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
    lhs = _dims(shapes.get(operands[0], "")) if operands else []
    k = math.prod(lhs[int(i)] for i in contracting.group(1).split(",") if i) if contracting else 1
    return 2.0 * math.prod(_dims(out_shape)) * k


def _trip_count(cond: list) -> int:
    """N of a loop whose condition is `counter < N` (scan, fori_loop); 1 if not of that form."""
    constants = {name: re.match(r"(-?\d+)", rest) for name, _, op, rest in cond if op == "constant"}
    for _, _, op, rest in cond:
        if op == "compare" and "direction=LT" in rest:
            for ref in re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0]):
                if constants.get(ref):
                    return int(constants[ref].group(1))
    return 1


def analyze(text: str) -> dict:
    """Per-device matmul FLOPs, collectives by kind and custom calls of one HLO module."""
    comps, entry = parse(text)
    shapes = {name: shape for instrs in comps.values() for name, shape, _, _ in instrs}
    weight = defaultdict(float)

    def visit(comp: str, times: float, depth: int = 0) -> None:
        if comp not in comps or depth > 64:
            return
        weight[comp] += times
        for _, _, op, rest in comps[comp]:
            if op == "while":
                body = re.search(r"body=%([\w.\-]+)", rest).group(1)
                cond = re.search(r"condition=%([\w.\-]+)", rest).group(1)
                visit(body, times * _trip_count(comps.get(cond, [])), depth + 1)
            elif op in ("fusion", "call", "conditional", "async-start") or op.endswith("-start"):
                for group in _CALLS.findall(rest):
                    for callee in re.findall(r"%([\w.\-]+)", group):
                        visit(callee, times, depth + 1)

    visit(entry, 1.0)
    flops, custom = 0.0, defaultdict(float)
    collectives = defaultdict(lambda: {"count": 0.0, "bytes": 0.0})
    for comp, times in weight.items():
        for _, shape, op, rest in comps[comp]:
            if op == "convolution":
                flops += times * _conv_flops(shape, rest, shapes)
            elif op == "dot":
                flops += times * _dot_flops(shape, rest, shapes)
            elif op == "custom-call":
                target = re.search(r'custom_call_target="([^"]+)"', rest)
                custom[target.group(1) if target else "?"] += times
            kind = op.removesuffix("-start")
            if kind in COLLECTIVES and not op.endswith("-done"):
                sizes = [_bytes(s) for s in re.findall(r"\w+\[[\d,]*\]", shape)]
                collectives[kind]["count"] += times
                collectives[kind]["bytes"] += times * (max(sizes) if op.endswith("-start")
                                                       else sum(sizes))
    return {"matmul_flops": flops, "collectives": {k: dict(v) for k, v in collectives.items()},
            "custom_calls": dict(custom)}
