"""Many devices and many hosts: the data x fsdp x tensor mesh and the one table of logical
axis rules (`sharding.py`), JAX multi-controller start-up on SLURM and TPU VMs
(`distributed.py`), and the shapes and shardings of a config's parameters (`params.py`).

May import: config, errors, model.
"""
