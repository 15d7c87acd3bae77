"""Run by tests/test_multiprocess.py in every process of launch/multiprocess.py:

    python tests/mp_batch.py WORKDIR --config.mesh.data=2 ...

builds the first global training batch exactly as `gptjax train` does (Pretraining.prepare, then
the global arrays) and checks it row by row against the batch one process reading all the data
builds. Losses cannot show a wrong row order (a batch mean does not see it); this can."""

import sys

import numpy as np
from jax.experimental import multihost_utils

from gptjax import data
from gptjax.config.loader import get_config
from gptjax.parallel import distributed, sharding
from gptjax.training import train


def main(workdir: str, overrides: list[str]) -> int:
    config = get_config("configs/smoke.py:tiny", ["--config.data.source=synthetic", *overrides])
    distributed.maybe_initialize(config)
    mesh = sharding.make_mesh(config.mesh)
    with config.unlocked():
        run = train.Pretraining().prepare(config, workdir, mesh)
    batch = next(train._global(run.batches, mesh, config.train.batch_size))
    got = multihost_utils.process_allgather(batch["inputs"], tiled=True)
    want = next(data.make_train_iter(config, run.tokenizer, 0, 1))["inputs"]
    ok = got.shape == want.shape and np.array_equal(got, want)
    print(f"batch {'ok' if ok else 'WRONG'}: global {got.shape} from host rows "
          f"{sharding.host_rows(mesh, config.train.batch_size).tolist()}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
