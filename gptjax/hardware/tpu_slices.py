"""TPU slices as Cloud TPU names them, and their devices as libtpu describes them (no TPU needed).

Slices are named as `gcloud` names accelerator types (docs/tpu.md):
- v4-N, v5p-N: N counts TensorCores, 2 per chip, so N/2 chips, one JAX device per chip
  (megacore), in a 3-D torus: v5p-8 = 2x2x1 chips, v5p-16 = 2x2x2, v5p-32 = 2x2x4, 2x4x4,
  4x4x4, ... (each doubling grows the smallest dimension, the last of equals first).
- v5e-N (= v5litepod-N), v6e-N: N chips in a 2-D grid: 1x1, 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16.
- any generation with an explicit shape: v5p:4x4x12, v6e:8x16.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

from gptjax.errors import UserError
from gptjax.hardware.devices import DEVICES

# generation: (libtpu's name, TensorCores per chip counted in "-N", grid dimensions)
GENERATIONS = {"v4": ("v4", 2, 3), "v5p": ("v5p", 2, 3), "v5e": ("v5e", 1, 2),
               "v6e": ("v6e", 1, 2)}
ALIASES = {"v5litepod": "v5e"}
CHIPS_PER_HOST = 4      # v4, v5p, and multi-host v5e / v6e slices: 2x2 chips per VM


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str           # as written: v5p-32, v5e:4x4
    generation: str     # v4 | v5p | v5e | v6e
    shape: tuple        # chips per grid dimension
    num_slices: int = 1

    @property
    def chips(self) -> int:
        return math.prod(self.shape) * self.num_slices

    @property
    def topology(self) -> str:
        return "x".join(map(str, self.shape))

    @property
    def hbm_bytes(self) -> int:
        return DEVICES[self.generation].memory_bytes

    @property
    def host_bounds(self) -> tuple:
        """Chips per host VM in each grid dimension: 2x2, except v5e-8 / v6e-8 (one 2x4 VM)."""
        if math.prod(self.shape) < CHIPS_PER_HOST or self.shape == (2, 4):
            return (*self.shape, 1, 1)[:3]
        return (2, 2, 1)

    @property
    def hosts(self) -> int:
        return math.prod(self.shape) // math.prod(self.host_bounds) * self.num_slices


def grid(chips: int, dims: int) -> tuple:
    """Power-of-two chip counts -> the slice's grid: double the smallest dimension (the last of
    equals) from 1x1 / 2x2x1, as Cloud TPU lays slices out."""
    shape = [1, 1] if dims == 2 else [2, 2, 1]
    if chips < math.prod(shape) or chips & (chips - 1):
        return ()
    while math.prod(shape) < chips:
        smallest = min(shape)
        i = max(j for j, s in enumerate(shape) if s == smallest)
        shape[i] *= 2
    return tuple(shape)


def parse_topology(text: str, num_slices: int = 1) -> Slice:
    """'v5p-32' | 'v5litepod-64' | 'v6e:8x16' -> Slice; anything else is one UserError line."""
    examples = "e.g. v5p-32, v5e-16 (= v5litepod-16), v6e-256, v4-32, or v5p:4x4x12"
    m = re.fullmatch(r"(v\d+[a-z]*)([-:])([\dx]+)", text.strip().lower())
    gen = ALIASES.get(m.group(1), m.group(1)) if m else None
    if gen not in GENERATIONS:
        raise UserError(f"--topology {text!r}: not a TPU accelerator type; {examples}")
    if num_slices < 1:
        raise UserError(f"--num-slices={num_slices} must be >= 1")
    _, cores, dims = GENERATIONS[gen]
    if m.group(2) == ":":
        shape = tuple(int(x) for x in m.group(3).split("x") if x)
        if len(shape) != dims or min(shape, default=0) < 1:
            raise UserError(f"--topology {text!r}: {gen} slices are {dims}-D grids of chips, "
                            f"e.g. {gen}:{'x'.join(['2'] * dims)}")
    else:
        if "x" in m.group(3) or int(m.group(3)) % cores:
            raise UserError(f"--topology {text!r}: {gen}-N counts {cores} core(s) per chip; "
                            f"{examples}")
        shape = grid(int(m.group(3)) // cores, dims)
        if not shape:
            raise UserError(f"--topology {text!r}: gptjax lays out power-of-two {gen} slices "
                            f"only; give the grid explicitly, e.g. {gen}:4x4x12")
    return Slice(text, gen, shape, num_slices)


def slice_for(device: str, chips: int) -> Slice | None:
    """The slice of `chips` chips of TPU generation `device` (plan's --device), where libtpu is
    installed and the slice has a standard layout; else None."""
    if device not in GENERATIONS or importlib.util.find_spec("libtpu") is None:
        return None
    _, cores, dims = GENERATIONS[device]
    shape = grid(chips, dims)
    return Slice(f"{device}-{chips * cores}", device, shape) if shape else None


def topology_devices(s: Slice) -> list:
    """The slice's devices as libtpu describes them (no TPU needed, only libtpu)."""
    name, cores, dims = GENERATIONS[s.generation]
    # Describing a slice needs no TPU: tell libtpu not to look for one on this machine (it
    # would query a metadata server and print warnings). A TPU VM has these set already.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{s.generation}-{math.prod(s.shape) * cores}")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no TPU is held: compiles may overlap
    try:
        from jax.experimental import topologies  # lazy: libtpu's compiler, only for `compile`
    except ImportError as e:
        raise UserError(f"gptjax compile needs libtpu: pip install -e '.[tpu]' ({e})") from None
    # Torus links close a dimension in full-size slices (3-D: 4x4x4 and up; 2-D: 16 chips).
    wrap = tuple((min(s.shape) >= 4) if dims == 3 else (d >= 16) for d in s.shape)
    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=f"{name}:{s.topology}", num_slices=s.num_slices,
            chips_per_host_bounds=s.host_bounds, wrap=(*wrap, False)[:3],
            chip_config_name="megacore" if cores == 2 else "default")
    except Exception as e:  # libtpu missing or the shape unknown to it
        raise UserError(f"--topology {s.name}: libtpu cannot describe {name}:{s.topology} "
                        f"({str(e).splitlines()[0][:160]}); is libtpu installed "
                        f"(pip install -e '.[tpu]')?") from None
    return list(desc.devices)
