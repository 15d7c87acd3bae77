"""The `Distillation` recipe (`gptjax distill`): train a student on a teacher's soft targets
(Hinton et al., 2015).

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + (1 - alpha) * cross-entropy(student, next token)

Both models read the same batch; the teacher's forward pass runs inside the student's jitted
train step, its params a step argument placed on the same mesh with the same sharding rules
(frozen: no gradient, no optimizer state). T^2 keeps the soft term's gradients at the scale of
the hard term's as T grows. The student is any model config (`--config`), or a pruned / trimmed
workdir (`distill.init_from`); it must share the teacher's vocabulary, since the KL compares the
two distributions token by token. The run goes through the training loop (gptjax/training/train.py):
resume, checkpoints, metrics and held-out loss exactly as in pretraining.

    gptjax distill --config configs/compress.py:student --workdir /tmp/student \
        --config.distill.teacher=/tmp/austen
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp

from gptjax.errors import UserError
from gptjax.training.evaluation import prepare_eval_batches
from gptjax.training.loss import cross_entropy, make_forward
from gptjax.training.recipes import RunData, inherited_batches
from gptjax.training.state import create_train_state, state_from_params
from gptjax.workdir import open_run


def distill_loss(student_btv, teacher_btv, targets_bt, weights_bt, vocab_size: int,
                 temperature: float, alpha: float):
    """-> (loss, mean KL at temperature T) over the real vocabulary's columns."""
    s = student_btv[..., :vocab_size].astype(jnp.float32) / temperature
    t = teacher_btv[..., :vocab_size].astype(jnp.float32) / temperature
    log_t, log_s = jax.nn.log_softmax(t), jax.nn.log_softmax(s)
    kl_bt = jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)
    w = jnp.ones_like(kl_bt) if weights_bt is None else weights_bt.astype(jnp.float32)
    kl = jnp.sum(kl_bt * w) / jnp.maximum(w.sum(), 1.0)
    hard_sum, hard_weight = cross_entropy(student_btv, targets_bt, weights_bt)
    hard = hard_sum / jnp.maximum(hard_weight, 1.0)
    return alpha * temperature ** 2 * kl + (1.0 - alpha) * hard, kl


def objective(teacher_config, temperature: float, alpha: float):
    """RunData.objective: loss_and_grads(params, batch, key, teacher_params)."""
    def make(config, model, param_shardings):
        if int(config.train.grad_accum) != 1:
            raise UserError("distillation does not accumulate gradients: set "
                            "train.grad_accum=1 (lower train.batch_size to save memory)")
        student = make_forward(config, model)
        teacher = make_forward(teacher_config)
        vocab = int(config.model.vocab_size)

        def loss(params, batch, key, teacher_params):
            s = student(params, batch["inputs"], key, train=True)
            t = jax.lax.stop_gradient(teacher(teacher_params, batch["inputs"]))
            return distill_loss(s, t, batch["targets"], batch.get("weights"), vocab,
                                temperature, alpha)[0]
        return jax.value_and_grad(loss)
    return make


def check(ds) -> None:
    if not ds.teacher:
        raise UserError("config.distill.teacher is empty: give the teacher's gptjax workdir")
    if not float(ds.temperature) > 0:
        raise UserError(f"config.distill.temperature={ds.temperature} must be > 0")
    if not 0.0 <= float(ds.alpha) <= 1.0:
        raise UserError(f"config.distill.alpha={ds.alpha} must be in [0, 1]")


class Distillation:
    """Next-token data of the teacher's run; the teacher's soft targets as the objective."""

    def prepare(self, config, workdir: str, mesh) -> RunData:
        ds = config.distill
        check(ds)
        teacher = open_run(ds.teacher, mesh=mesh)
        vocab = int(teacher.config.model.vocab_size)
        start = open_run(ds.init_from, mesh=mesh) if ds.init_from else None
        if start is not None:
            config.model = copy.deepcopy(start.config.model)
        if start is not None and int(config.model.vocab_size) != vocab:
            raise UserError(f"the student ({ds.init_from}) has a vocabulary of "
                            f"{config.model.vocab_size} tokens, the teacher ({ds.teacher}) "
                            f"{vocab}: distillation compares their distributions token by "
                            f"token, so both need the same tokenizer")
        config.model.vocab_size = vocab
        seq_len = min(int(config.data.seq_len), int(teacher.config.model.max_seq_len),
                      int(config.model.max_seq_len))
        config.data = copy.deepcopy(teacher.config.data)  # the teacher's data and tokenizer
        config.data.seq_len = seq_len
        tokenizer = teacher.tokenizer
        batches = inherited_batches(config, tokenizer, workdir, mesh)

        def init_state(cfg, mesh, model, tx, sh):
            if start is None:
                return create_train_state(cfg, mesh, model, tx, sh)
            return state_from_params(cfg, mesh, start.params, tx, sh)
        return RunData(
            config, tokenizer, batches, lambda: prepare_eval_batches(config, tokenizer, mesh),
            init_state, describe=f" (distilling {ds.teacher} at T={ds.temperature}, "
                                 f"alpha={ds.alpha})",
            eval_first=start is not None,
            objective=objective(teacher.config, float(ds.temperature), float(ds.alpha)),
            frozen=teacher.params)
