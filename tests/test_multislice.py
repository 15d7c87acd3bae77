"""Multislice meshes (`config.mesh.dcn_*`): which devices each mesh axis runs across.

The device layout is computed by `sharding.device_grid`, so it is checked here with stand-in
devices (a TPU multislice job cannot run on a CPU): 2 slices x 4 chips, and 2 processes x 4
CPU devices. The real cross-process runs are in tests/test_multiprocess.py.
"""

import dataclasses

import numpy as np
import pytest

from gptjax.config.loader import load_config
from gptjax.errors import UserError
from gptjax.parallel import sharding


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    id: int
    process_index: int
    slice_index: int | None = None
    platform: str = "cpu"
    device_kind: str = "cpu"


def _mesh_cfg(**kw):
    c = load_config("configs/smoke.py:tiny")
    for k, v in kw.items():
        c.mesh[k] = v
    return c.mesh


def _slices(n_slices=2, per_slice=4, tpu=True):
    return [FakeDevice(id=i, process_index=i // 2,
                       slice_index=(i // per_slice) if tpu else None)
            for i in range(n_slices * per_slice)]


def _granules(grid, axis):
    """For each position along `axis`, the slice (or process) of its devices."""
    key = (lambda d: d.slice_index) if grid.flat[0].slice_index is not None else (
        lambda d: d.process_index)
    moved = np.moveaxis(np.vectorize(key)(grid), axis, 0)
    return [sorted(set(moved[i].ravel().tolist())) for i in range(moved.shape[0])]


def test_dcn_data_puts_data_parallelism_across_slices():
    grid = sharding.device_grid(_mesh_cfg(data=-1, fsdp=2, dcn_data=2), _slices())
    assert grid.shape == (4, 2, 1)
    # data positions 0-1 in slice 0, 2-3 in slice 1; fsdp stays inside a slice (ICI)
    assert _granules(grid, 0) == [[0], [0], [1], [1]]
    assert all(len({d.slice_index for d in row}) == 1 for row in grid.reshape(4, -1))


def test_dcn_tensor_across_processes_without_slices():
    devices = _slices(tpu=False)          # 2 processes x 4 CPU devices, no slice_index
    devices = [dataclasses.replace(d, process_index=d.id // 4) for d in devices]
    grid = sharding.device_grid(_mesh_cfg(data=4, tensor=2, dcn_tensor=2), devices)
    assert grid.shape == (4, 1, 2)
    for pair in grid.reshape(4, 2):       # each tensor pair: one device of each process
        assert sorted(d.process_index for d in pair) == [0, 1]


def test_multislice_without_dcn_and_bad_dcn_are_one_line_errors():
    with pytest.raises(UserError, match="spans 2 TPU slices: set config.mesh.dcn_data=2"):
        sharding.device_grid(_mesh_cfg(data=-1), _slices())
    with pytest.raises(UserError, match="spans 4 slices / processes but the devices are in 2"):
        sharding.device_grid(_mesh_cfg(data=-1, dcn_data=4), _slices())
    with pytest.raises(UserError, match="divide its axis"):
        sharding.device_grid(_mesh_cfg(data=-1, tensor=2, dcn_tensor=4), _slices())
