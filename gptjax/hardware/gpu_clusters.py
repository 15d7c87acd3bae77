"""NVIDIA GPU clusters, and their devices as XLA:GPU describes them (no GPU needed).

Clusters are named by GPU and count (docs/gpu.md):
- h100-N, h200-N, a100-N: N GPUs, on one host for N <= 8, else on N / 8 hosts of 8 (N a
  multiple of 8): h100-8 is one 8-GPU host (an HGX / DGX node), h100-128 sixteen of them.
- h100-8xH: H hosts of 8 GPUs each, written out: h100-8x16 = h100-128.

The CUDA plugin (`pip install -e '.[gpu-compile]'`) holds XLA:GPU's compiler. Given a
`stream_executor.GpuTargetConfigProto` (the GPU's description: memory, SMs, compute capability,
cuDNN version) it hands JAX compile-only devices of that GPU, and `.lower(...).compile()` then
runs the whole XLA:GPU pipeline for them on a CPU machine (SPMD partitioning, fusion,
scheduling, buffer assignment, PTX). The descriptions are XLA's own
(`xla/backends/gpu/target_config/specs/`), shipped in gptjax/hardware/gpu_specs/. Nothing is
autotuned in such a compile (kernel choices can differ from a compile on the GPU); the
sharding, fusion and memory plan are the real ones.

A program too large for the GPU still compiles: the fit verdict is gptjax's own comparison of
the compiler's total with the usable memory, USABLE_FRACTION of the GPU's. JAX preallocates
XLA_PYTHON_CLIENT_MEM_FRACTION of the GPU's memory as its buffer pool, 0.75 by default;
gptjax's GPU launch environment (launch/env/gpu.env, which launch/gpu_bench.sh and
launch/slurm_gpu.sbatch source) raises it to 0.9, leaving the rest to the CUDA context, NCCL's
buffers and cuBLAS / cuDNN handles outside the pool. So a step fits when its total is at most
0.9 of the memory the GPU reports; run with the default 0.75 and it needs that share instead.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from importlib import resources

from gptjax.errors import UserError

# --topology name: (spec file in gpu_specs/, memory the GPU reports to CUDA, in bytes: its
# spec's device_memory_size)
GPUS = {"h100": ("h100.txtpb", 84942979072), "h200": ("h200.txtpb", 151397597184),
        "a100": ("a100.txtpb", 85100068864)}
GPUS_PER_HOST = 8
USABLE_FRACTION = 0.9   # = XLA_PYTHON_CLIENT_MEM_FRACTION in launch/env/gpu.env
PLUGIN = "jax_cuda12_plugin"


@dataclasses.dataclass(frozen=True)
class Cluster:
    name: str            # as written: h100-8, h100-8x4
    generation: str      # h100 | h200 | a100
    hosts: int
    gpus_per_host: int
    num_slices: int = 1  # the TPU report's field: one NCCL world

    @property
    def chips(self) -> int:
        return self.hosts * self.gpus_per_host

    @property
    def topology(self) -> str:
        """XLA:GPU's topology string: slices x hosts per slice x GPUs per host."""
        return f"1x{self.hosts}x{self.gpus_per_host}"

    @property
    def hbm_bytes(self) -> int:
        return GPUS[self.generation][1]

    @property
    def usable_bytes(self) -> int:
        return int(self.hbm_bytes * USABLE_FRACTION)


def is_gpu_topology(text: str) -> bool:
    return re.match(r"[a-z]\d+", text.strip().lower()) is not None and \
        text.strip().lower().split("-")[0] in GPUS


def parse_cluster(text: str) -> Cluster:
    """'h100-8' | 'h200-1' | 'h100-128' | 'h100-8x16' -> Cluster; else one UserError line."""
    examples = "e.g. h100-8, h200-1, a100-8, h100-8x4 (4 hosts of 8)"
    m = re.fullmatch(r"([a-z]\d+)-(\d+)(?:x(\d+))?", text.strip().lower())
    if not m or m.group(1) not in GPUS:
        raise UserError(f"--topology {text!r}: not a GPU cluster; {examples}")
    gpus, hosts = int(m.group(2)), m.group(3)
    if hosts is not None:
        if gpus < 1 or int(hosts) < 1 or gpus > GPUS_PER_HOST:
            raise UserError(f"--topology {text!r}: GPUSxHOSTS takes 1-{GPUS_PER_HOST} GPUs per "
                            f"host and at least one host; {examples}")
        return Cluster(text, m.group(1), int(hosts), gpus)
    if gpus < 1 or (gpus > GPUS_PER_HOST and gpus % GPUS_PER_HOST):
        raise UserError(f"--topology {text!r}: more than {GPUS_PER_HOST} GPUs come in hosts of "
                        f"{GPUS_PER_HOST}; {examples}")
    if gpus <= GPUS_PER_HOST:
        return Cluster(text, m.group(1), 1, gpus)
    return Cluster(text, m.group(1), gpus // GPUS_PER_HOST, GPUS_PER_HOST)


def cluster_for(device: str, gpus: int) -> Cluster | None:
    """The cluster of `gpus` GPUs of kind `device` (plan's --device) where the CUDA plugin is
    installed and the count is one the cluster names take; else None."""
    if device not in GPUS or not has_plugin() or gpus < 1:
        return None
    if gpus > GPUS_PER_HOST and gpus % GPUS_PER_HOST:
        return None
    return parse_cluster(f"{device}-{gpus}")


def has_plugin() -> bool:
    return importlib.util.find_spec(PLUGIN) is not None


def target_config(generation: str) -> str:
    """The GPU's GpuTargetConfigProto, in text form (gptjax/hardware/gpu_specs/)."""
    spec = resources.files("gptjax.hardware").joinpath("gpu_specs", GPUS[generation][0])
    return spec.read_text()


def topology_devices(c: Cluster) -> list:
    """The cluster's compile-only devices as XLA:GPU describes them (the CUDA plugin, no GPU)."""
    if not has_plugin():
        raise UserError(f"--topology {c.name}: compiling for GPUs needs the CUDA plugin: "
                        f"pip install -e '.[gpu-compile]'")
    from jax.experimental import topologies  # lazy, as for libtpu: only `compile` needs it
    try:
        desc = topologies.get_topology_desc(platform="cuda", topology=c.topology,
                                            target_config=target_config(c.generation))
    except Exception as e:  # e.g. JAX_PLATFORMS includes cuda on a machine without a GPU
        raise UserError(f"--topology {c.name}: XLA:GPU cannot describe {c.topology} "
                        f"({str(e).splitlines()[0][:160]}); on a machine without a GPU run "
                        f"with JAX_PLATFORMS=cpu") from None
    return list(desc.devices)
