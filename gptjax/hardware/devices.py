"""The accelerators gptjax knows, in one table: memory per device (what `gptjax plan` and
`gptjax compile` plan against), backend, and dense bf16 peak FLOP/s (the MFU of `gptjax train`
and `gptjax bench`).

MFU = achieved model FLOP/s per device / the device's peak dense bf16 FLOP/s, where achieved
FLOP/s = tokens/s x FLOPs per token (`gptjax info`: 6N + 12LHQT) / number of devices. Devices
with no peak here (CPUs included) get no MFU rather than a made-up one.
"""

from __future__ import annotations

from typing import NamedTuple

GiB = 2 ** 30
MiB = 2 ** 20


class Device(NamedTuple):
    memory_bytes: int              # per device, as the runtime reports it (0 = no limit checked)
    backend: str                   # gpu | tpu | cpu: picks the compute dtype ("auto")
    peak_bf16_flops: float | None  # dense bf16 peak FLOP/s (vendor datasheets, no sparsity)
    kinds: tuple = ()              # lower-cased pieces of `jax.devices()[0].device_kind`


# Keyed by `gptjax plan --device` name. Memory: nvidia-smi's MiB for GPUs; TPU HBM per chip from
# Cloud TPU's system-architecture pages.
DEVICES = {
    "h100": Device(81559 * MiB, "gpu", 989e12, ("h100",)),               # H100 SXM 80GB, HBM3
    "h200": Device(143771 * MiB, "gpu", 989e12, ("h200",)),              # H200 141GB
    "a100": Device(81920 * MiB, "gpu", 312e12, ("a100",)),               # A100 80GB
    "v4": Device(32 * GiB, "tpu", 275e12, ("tpu v4",)),
    "v5e": Device(16 * GiB, "tpu", 197e12, ("tpu v5 lite", "tpu v5e")),
    "v5p": Device(95 * GiB, "tpu", 459e12, ("tpu v5p", "tpu v5")),      # v5p says "TPU v5"
    "v6e": Device(32 * GiB, "tpu", 918e12, ("tpu v6 lite", "tpu v6e")),  # Trillium
    "cpu": Device(0, "cpu", None),       # no limit checked; float32 compute (for validation)
}
# Devices with a known peak that `gptjax plan` has no --device for.
OTHER_PEAKS = {"h100 pcie": 756e12, "gh200": 989e12, "tpu7x": 2307e12}

# device_kind piece -> peak FLOP/s. The longest piece found in a device_kind wins, so
# "NVIDIA H100 PCIe" is an H100 PCIe, not an H100 SXM, and "TPU v5 lite" not a v5p.
PEAK_BF16_FLOPS = {**{kind: d.peak_bf16_flops for d in DEVICES.values() for kind in d.kinds},
                   **OTHER_PEAKS}


def peak_flops(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of a `jax.Device.device_kind`, or None where unknown."""
    kind = device_kind.lower()
    found = [(len(name), peak) for name, peak in PEAK_BF16_FLOPS.items() if name in kind]
    return max(found)[1] if found else None


def throughput(tokens_per_s: float, flops_per_token: float, num_devices: int,
               device_kind: str) -> dict:
    """tokens/s -> {'tflops_per_device', 'mfu'} ('mfu' only for devices with a known peak)."""
    per_device = tokens_per_s * flops_per_token / max(num_devices, 1)
    out = {"tflops_per_device": per_device / 1e12}
    peak = peak_flops(device_kind)
    if peak:
        out["mfu"] = 100.0 * per_device / peak
    return out


def human_bytes(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 2 ** 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"
