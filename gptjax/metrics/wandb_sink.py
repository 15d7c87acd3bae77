"""`train.wandb=True`: the scalars TensorBoard gets, logged to Weights & Biases as well (the
`wandb` extra). The run id is kept in WORKDIR/wandb_id, so a resumed run continues the same
W&B run; `WANDB_MODE=offline` logs to WORKDIR/wandb/ without a network (`wandb sync` later).
"""

from __future__ import annotations

import secrets

from gptjax.errors import UserError
from gptjax.storage import paths

ID_FILE = "wandb_id"


class WandbSink:
    def __init__(self, workdir: str, local_dir: str, project: str, name: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise UserError("config.train.wandb=True needs Weights & Biases: "
                            "pip install -e '.[wandb]'") from None
        id_path = paths.join(workdir, ID_FILE)
        if paths.exists(id_path):
            run_id = paths.read_text(id_path).strip()
        else:
            run_id = secrets.token_hex(4)
            paths.write_text(id_path, run_id + "\n")
        self.run = wandb.init(project=project, name=name, id=run_id, resume="allow",
                              dir=local_dir, config=config)

    def write(self, step: int, scalars: dict) -> None:
        self.run.log(scalars, step=int(step))

    def close(self) -> None:
        self.run.finish()
