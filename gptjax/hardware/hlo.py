"""What a compiled XLA program does, read from its optimized HLO text (`compiled.as_text()`):
matmul FLOPs and collectives per device, with every loop body counted as often as it runs.

    stats = hlo.analyze(compiled.as_text())
    stats["matmul_flops"], stats["collectives"]   # {'all-gather': {'count', 'bytes'}, ...}
    stats["collective_dtypes"]                    # {'all-gather': {'bf16': {'count', 'bytes'}}}

`compiled.cost_analysis()` counts the body of a `while` loop (a scanned layer stack, gradient
accumulation, the chunked loss) once; here each body is weighted by its trip count, read from
the loop's `known_trip_count` or else its counter (`for (i = start; i < N; i += step)`).
Matmuls are XLA's `dot` and `convolution` instructions (TPU lowers dots to convolutions),
counted the way XLA's cost analysis counts them: 2 FLOPs per multiply-add over the window
positions that fall inside the input. Custom calls (Pallas
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
    """-> ({computation: [(name, shape, opcode, rest)], its ROOT last}, entry computation)."""
    comps, roots, entry, current = {}, {}, None, None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            comps.setdefault(current, [])
            if line.startswith("ENTRY"):
                entry = current
            continue
        m = _INSTR.match(line) if current is not None else None
        if m and line.lstrip().startswith("ROOT "):
            roots[current] = m.groups()
        elif m:
            comps[current].append(m.groups())
    for comp, root in roots.items():
        comps[comp].append(root)
    return comps, entry


def _conv_flops(out_shape: str, rest: str, shapes: dict) -> float:
    """2 x output batch x output features x input features x valid window positions."""
    operands = _operands(rest)
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
    operands = _operands(rest)
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
    lhs = _dims(shapes.get(operands[0], "")) if operands else []
    k = math.prod(lhs[int(i)] for i in contracting.group(1).split(",") if i) if contracting else 1
    return 2.0 * math.prod(_dims(out_shape)) * k


def _operands(rest: str) -> list[str]:
    return re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])


def _constant(name: str, instrs: dict) -> int | None:
    """The integer a scalar constant (or a copy / convert of one) holds, else None."""
    for _ in range(4):
        found = instrs.get(name)
        if found is None:
            return None
        _, op, rest = found
        if op == "constant":
            m = re.match(r"(-?\d+)", rest)
            return int(m.group(1)) if m else None
        if op not in ("copy", "convert", "bitcast") or not _operands(rest):
            return None
        name = _operands(rest)[0]
    return None


def _unwrap(op: str, rest: str, comps: dict) -> tuple[str, str]:
    """A fusion around a single scalar op (XLA:CPU wraps compare / add) -> (that op, its
    attributes with the fusion's operands)."""
    called = re.search(r"calls=%([\w.\-]+)", rest)
    if op != "fusion" or not called or not comps.get(called.group(1)):
        return op, rest
    _, _, inner_op, inner_rest = comps[called.group(1)][-1]
    return inner_op, "(" + ", ".join(f"%{o}" for o in _operands(rest)) + ")" + \
        inner_rest.split(")", 1)[-1]


def _trip_count(loop_rest: str, comps: dict, instrs: dict) -> int:
    """Iterations of a `while`: its known_trip_count, else those of `for (i = start; i < limit;
    i += step)`: the counter is the tuple element the condition compares with a constant, its
    step the body's update of it, its start the initial tuple's. 1 if of neither form."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop_rest)
    if known:
        return int(known.group(1))
    cond = comps.get(re.search(r"condition=%([\w.\-]+)", loop_rest).group(1), [])
    body = comps.get(re.search(r"body=%([\w.\-]+)", loop_rest).group(1), [])
    limit, index = None, 0
    for _, _, op, rest in cond:
        op, rest = _unwrap(op, rest, comps)
        if op == "compare" and "direction=LT" in rest:
            for ref in _operands(rest):
                value = _constant(ref, instrs)
                if value is not None:
                    limit = value
                elif ref in instrs and instrs[ref][1] == "get-tuple-element":
                    index = int(re.search(r"index=(\d+)", instrs[ref][2]).group(1))
    if limit is None:
        return 1
    step, start = 1, 0  # the counter is element `index` of the loop's tuple
    updates = _operands(body[-1][3]) if body and body[-1][2] == "tuple" else []
    update = instrs.get(updates[index]) if index < len(updates) else None
    if update:  # parse() puts ROOT last
        op, rest = _unwrap(update[1], update[2], comps)
        if op == "add":
            step = next((v for v in (_constant(r, instrs) for r in _operands(rest)) if v), 1)
    initial = instrs.get((_operands(loop_rest) or [""])[0])
    if initial and initial[1] == "tuple" and index < len(_operands(initial[2])):
        start = _constant(_operands(initial[2])[index], instrs) or 0
    return max(1, -(-(limit - start) // step))


def analyze(text: str) -> dict:
    """Per-device matmul FLOPs, collectives by kind and custom calls of one HLO module."""
    comps, entry = parse(text)
    instrs = {name: (shape, op, rest) for body in comps.values() for name, shape, op, rest in body}
    shapes = {name: shape for name, (shape, _, _) in instrs.items()}
    weight = defaultdict(float)

    def visit(comp: str, times: float, depth: int = 0) -> None:
        if comp not in comps or depth > 64:
            return
        weight[comp] += times
        for _, _, op, rest in comps[comp]:
            if op == "while":
                body = re.search(r"body=%([\w.\-]+)", rest).group(1)
                visit(body, times * _trip_count(rest, comps, instrs), depth + 1)
            elif op in ("fusion", "call", "conditional", "async-start") or op.endswith("-start"):
                for group in _CALLS.findall(rest):
                    for callee in re.findall(r"%([\w.\-]+)", group):
                        visit(callee, times, depth + 1)

    visit(entry, 1.0)
    flops, custom = 0.0, defaultdict(float)
    collectives = defaultdict(lambda: {"count": 0.0, "bytes": 0.0})
    by_dtype = defaultdict(lambda: defaultdict(lambda: {"count": 0.0, "bytes": 0.0}))
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
                arrays = re.findall(r"\w+\[[\d,]*\]", shape)
                sizes = [_bytes(s) for s in arrays]
                collectives[kind]["count"] += times
                collectives[kind]["bytes"] += times * (max(sizes) if op.endswith("-start")
                                                       else sum(sizes))
                if op.endswith("-start"):  # (operands, results, ...): the largest one
                    arrays = [arrays[sizes.index(max(sizes))]] if arrays else []
                for a in arrays:  # an all-reduce of a tuple is counted once per dtype in it
                    dtype = _ARRAY.match(a).group(1)
                    by_dtype[kind][dtype]["bytes"] += times * _bytes(a)
                for dtype in {_ARRAY.match(a).group(1) for a in arrays}:
                    by_dtype[kind][dtype]["count"] += times
    return {"matmul_flops": flops, "collectives": {k: dict(v) for k, v in collectives.items()},
            "collective_dtypes": {k: {t: dict(c) for t, c in v.items()}
                                  for k, v in by_dtype.items()},
            "custom_calls": dict(custom)}
