"""Distillation: zero KL when the teacher is the student at T=1, a run through the training loop
that resumes, and a clear error for a student with another vocabulary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compress_helpers import tiny, tiny_config, train_tiny

from gptjax.compression import surgery
from gptjax.data.tokenizer import SyntheticTokenizer
from gptjax.errors import UserError
from gptjax.model.gpt import GPT
from gptjax.training import distill, train
from gptjax.training.loss import cross_entropy
from gptjax.workdir import open_run


def test_student_equal_to_teacher_at_t1_has_zero_kl():
    config, c, params = tiny(noisy=False)
    tokens = jax.random.randint(jax.random.key(1), (4, 17), 0, c.vocab_size)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    lag = distill.objective(config, temperature=1.0, alpha=1.0)(config, GPT(c), None)
    loss, grads = jax.jit(lag)(params, batch, jax.random.key(2), params)
    # Zero up to float rounding: the two forward passes are compiled as separate computations.
    assert abs(float(loss)) < 1e-6
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) < 1e-6
    logits = GPT(c).apply({"params": params}, batch["inputs"])
    same = distill.distill_loss(logits, logits, batch["targets"], None, c.vocab_size, 1.0, 1.0)
    assert float(same[0]) == float(same[1]) == 0.0  # the same logits: exactly zero
    # A different teacher: positive KL; alpha=0 is the plain next-token loss.
    other = logits + jax.random.normal(jax.random.key(3), logits.shape)
    loss, kl = distill.distill_loss(logits, other, batch["targets"], None, c.vocab_size, 2.0, 0.5)
    assert float(kl) > 0
    hard, _ = distill.distill_loss(logits, other, batch["targets"], None, c.vocab_size, 2.0, 0.0)
    total, n = cross_entropy(logits, batch["targets"])
    assert abs(float(hard) - float(total / n)) < 1e-6


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return train_tiny(tmp_path_factory, "distill")


def student_config(teacher, steps, **distill_keys):
    config = tiny_config("--config.model.num_layers=1", f"--config.train.steps={steps}",
                         f"--config.distill.teacher={teacher}", "--config.train.ckpt_every=2")
    config.distill.update(distill_keys)
    return config


def test_distill_runs_through_the_loop_and_resumes(teacher, tmp_path):
    workdir = str(tmp_path / "student")
    first = train.train(student_config(teacher, 2), workdir, distill.Distillation())
    assert first["step"] == 2 and np.isfinite(first["loss"])
    second = train.train(student_config(teacher, 4), workdir, distill.Distillation())
    assert second["step"] == 4 and np.isfinite(second["eval_loss"])
    config, params, _, step = open_run(workdir)
    assert step == 4 and config.model.num_layers == 1


def test_student_with_another_vocabulary_is_refused(teacher, tmp_path):
    config, _, params = tiny(noisy=False, vocab_size=50)
    other = surgery.write_model(str(tmp_path / "v50"), config, SyntheticTokenizer(50), params)
    with pytest.raises(UserError, match="vocabulary of 50 tokens.*100"):
        train.train(student_config(teacher, 2, init_from=other), str(tmp_path / "s"),
                    distill.Distillation())
    with pytest.raises(UserError, match="temperature"):
        train.train(student_config(teacher, 2, temperature=0.0), str(tmp_path / "t"),
                    distill.Distillation())
