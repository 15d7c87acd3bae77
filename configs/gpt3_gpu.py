"""GPT-3 sizes on NVIDIA GPU clusters: `--config configs/gpt3_gpu.py:SIZE-CLUSTER`.

Each variant is configs/gpt3.py's SIZE (the paper's shape, batch and schedule) partitioned for
one cluster (gptjax/hardware/gpu_clusters.py names them): parameters, gradients and Adam state
sharded over every GPU (FSDP), each layer recomputed in the backward pass (remat full), and the
paper's global batch split into micro-batches (train.grad_accum) small enough to fit. Each is
proved to fit by the XLA:GPU compiler, without a GPU (docs/gpu.md):

    gptjax compile --config configs/gpt3_gpu.py:xl-h100-8 --topology h100-8

CLUSTERS names the cluster each variant is for; on a real cluster, train with the same
`--config` (launch/slurm_gpu.sbatch).
"""

import os

from gptjax.config.loader import load_module

GPT3 = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt3.py"))

# variant: (configs/gpt3.py size, cluster, sequences per GPU per micro-batch)
SHAPES = {
    "xl-h200-1": ("xl", "h200-1", 64),
    "xl-h100-8": ("xl", "h100-8", 64),
    "2.7b-h200-1": ("2.7b", "h200-1", 32),
    "2.7b-h100-8": ("2.7b", "h100-8", 32),
    "6.7b-h100-8": ("6.7b", "h100-8", 16),
    "13b-h100-8": ("13b", "h100-8", 8),
    "175b-h100-128": ("175b", "h100-128", 1),
}
VARIANTS = {name: GPT3.VARIANTS[size] for name, (size, _, _) in SHAPES.items()}
CLUSTERS = {name: cluster for name, (_, cluster, _) in SHAPES.items()}


def _gpus(cluster: str) -> int:
    count = cluster.split("-")[1]
    hosts_of = count.split("x")
    return int(hosts_of[0]) * (int(hosts_of[1]) if len(hosts_of) > 1 else 1)


def get_config(variant: str = "xl-h100-8"):
    size, cluster, per_gpu = SHAPES[variant]
    c = GPT3.get_config(size)
    c.name = f"gpt3-{variant}"
    c.model.remat = "full"
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.train.grad_accum = c.train.batch_size // (per_gpu * _gpus(cluster))
    return c
