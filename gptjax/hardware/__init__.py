"""What the machines are: the device table (memory per device, peak bf16 FLOP/s, MFU), TPU
generations and slice topologies, NVIDIA GPU clusters (XLA:GPU's compile-only devices),
and the analysis of compiled HLO text (FLOPs, collectives).

May import: gptjax.errors. Pure data and text: nothing here allocates a device.
"""
