"""Accelerator memory per device, as gptjax plans against it (`gptjax plan`, `gptjax compile`)."""

from __future__ import annotations

GiB = 2 ** 30
# Memory per device, bytes, as the runtime reports it (nvidia-smi's MiB for GPUs; TPU HBM per
# chip from Cloud TPU's system-architecture pages). backend picks the compute dtype ("auto").
DEVICES = {
    "h100": (81559 * 2 ** 20, "gpu"),    # H100 SXM 80GB
    "h200": (143771 * 2 ** 20, "gpu"),   # H200 141GB
    "a100": (81920 * 2 ** 20, "gpu"),    # A100 80GB
    "v4": (32 * GiB, "tpu"),
    "v5e": (16 * GiB, "tpu"),
    "v5p": (95 * GiB, "tpu"),
    "v6e": (32 * GiB, "tpu"),
    "cpu": (0, "cpu"),                   # no limit checked; float32 compute (for validation)
}


def human_bytes(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"
