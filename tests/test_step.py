"""The train step's arithmetic: token-weighted accumulation, fp32 gradient paths, the schedule
after skipped steps, the optimizer-state size, remat in the unrolled layout."""

import importlib.util
import json
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import HAS_LIBTPU, needs_libtpu

from gptjax import cli
from gptjax.config.loader import get_config
from gptjax.hardware import hlo
from gptjax.hardware.tpu_slices import parse_topology
from gptjax.model.gpt import GPT, GPTConfig
from gptjax.parallel import sharding
from gptjax.parallel.params import with_shardings
from gptjax.performance.aot import compile_config
from gptjax.training import steps
from gptjax.training.optim import schedule
from gptjax.training.state import abstract_train_state, create_train_state


def tiny(*overrides: str):
    return get_config("configs/smoke.py:tiny", list(overrides))


def masked_batch(c, seed=0):
    """Rows with response-style masks of different lengths; rows 3 and 7 weigh nothing (with
    A=4 they form micro-batch 3: a micro-batch with no weighted token)."""
    rng = np.random.default_rng(seed)
    b, t = c.train.batch_size, c.data.seq_len
    tokens = rng.integers(0, c.model.vocab_size, (b, t + 1)).astype(np.int32)
    weights = np.zeros((b, t), np.float32)
    for r, n in enumerate([2, 16, 5, 0, 9, 1, 12, 0]):
        weights[r, t - n:] = 1.0
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}


def loss_and_grads(accum, batch, *overrides):
    c = tiny(f"--config.train.grad_accum={accum}", *overrides)
    mesh = sharding.single_device_mesh()
    params = create_train_state(c, mesh).params
    fn = jax.jit(steps.make_loss_and_grads(c))
    loss, grads = fn(params, jax.tree.map(jnp.asarray, batch), jax.random.key(0))
    return float(loss), jax.device_get(grads)


def max_rel(a_tree, b_tree):
    def rel(a, b):
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
    return max(jax.tree.leaves(jax.tree.map(rel, a_tree, b_tree)))


@pytest.mark.parametrize("accum", [2, 4])
def test_weighted_accumulation_equals_one_big_batch(accum):
    batch = masked_batch(tiny())
    ref_loss, ref_grads = loss_and_grads(1, batch)
    loss, grads = loss_and_grads(accum, batch)
    assert abs(loss - ref_loss) <= 2e-6 * abs(ref_loss)
    assert max_rel(grads, ref_grads) <= 2e-5


def test_accumulation_with_no_weighted_token_at_all():
    batch = masked_batch(tiny())
    batch["weights"][:] = 0.0
    loss, grads = loss_and_grads(4, batch)
    assert loss == 0.0
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads)) == 0.0


def embedding_grad(dtype):
    """d/d wte of a random projection of the final hidden states; token 7 at every other one
    of 16 x 256 positions (the untied table, so only the lookup feeds its gradient)."""
    c = tiny("--config.model.max_seq_len=256", "--config.model.tie_embeddings=False",
             f"--config.model.dtype={dtype}")
    model = GPT(GPTConfig.from_config(c.model))
    tokens = np.random.default_rng(0).integers(0, 65, (16, 256)).astype(np.int32)
    tokens[:, ::2] = 7
    params = nn.unbox(model.init(jax.random.key(0), tokens[:1, :8])["params"])
    r = jax.random.normal(jax.random.key(1), (16, 256, c.model.d_model))

    def f(p):
        return (model.apply({"params": p}, tokens, hidden=True).astype(jnp.float32) * r).sum()
    return np.asarray(jax.jit(jax.grad(f))(params)["wte"]["embedding"][7])


def test_embedding_gradient_accumulates_in_float32():
    ref = embedding_grad("float32")
    got = embedding_grad("bfloat16")  # a bfloat16 scatter-add is off by ~11% here
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()


def test_embed_lookup_compares_two_ways_of_the_same_lookup(repo_dir):
    """launch/embed_lookup.py (docs/training.md, "The token embedding"): its gather and one-hot
    give the same rows and table gradients, and the command prints a time for each."""
    spec = importlib.util.spec_from_file_location("embed_lookup", repo_dir / "launch" /
                                                  "embed_lookup.py")
    lookup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lookup)
    c = GPTConfig.from_config(tiny().model, backend="tpu")  # bfloat16 compute, float32 table
    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.normal(size=(c.padded_vocab, c.d_model)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, c.vocab_size, (4, 16)), jnp.int32)
    ct = jnp.asarray(rng.normal(size=(4, 16, c.d_model)), c.dtype)
    (rows_g, grad_g), (rows_h, grad_h) = (jax.jit(lookup.forward_backward(f, c))(table, tokens, ct)
                                          for f in (lookup.gather, lookup.one_hot))
    assert grad_g.dtype == grad_h.dtype == jnp.float32 and float(jnp.abs(grad_g).max()) > 0
    np.testing.assert_array_equal(np.asarray(rows_g, np.float32), np.asarray(rows_h, np.float32))
    np.testing.assert_allclose(grad_g, grad_h, rtol=1e-6, atol=1e-6)
    for extra in ([], *([["--topology", "v6e-4"]] if HAS_LIBTPU else [])):
        out = subprocess.run([sys.executable, "launch/embed_lookup.py", "--config",
                              "configs/smoke.py", "--repeats", "2", *extra], cwd=repo_dir,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        times = re.findall(r"^  (gather|one-hot) +([\d.]+) µs", out.stdout, re.M)
        assert [t[0] for t in times] == ["gather", "one-hot"], out.stdout


def test_skipped_step_advances_the_schedule_and_logs_the_applied_lr():
    """Adam with b1 = b2 = 0 and no decay or clipping moves each weight by lr x sign(grad):
    the applied learning rate can be read off the params. Step 2 is non-finite (NaN weights)."""
    c = tiny("--config.optim.b1=0", "--config.optim.b2=0", "--config.optim.weight_decay=0",
             "--config.optim.grad_clip=0", "--config.optim.warmup_steps=10",
             "--config.optim.lr=0.01")
    mesh = sharding.single_device_mesh()
    _, shardings = abstract_train_state(c, mesh)
    state = create_train_state(c, mesh)
    step = steps.make_train_step(c, mesh, shardings)
    good = masked_batch(c)
    bad = dict(good, weights=np.full_like(good["weights"], np.nan))
    lrs = []
    for batch in (good, bad, good):
        before = jax.device_get(state.params)
        state, metrics = step(state, jax.tree.map(jnp.asarray, batch))
        moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), jax.device_get(state.params),
                             before)
        lrs.append((float(metrics["lr"]), max(jax.tree.leaves(moved))))
    lr_fn = schedule(c.optim, c.train.steps)
    assert int(state.skipped) == 1 and lrs[1][1] == 0.0
    assert lrs[2][0] == pytest.approx(float(lr_fn(2)))       # the schedule counts steps...
    assert lrs[2][1] == pytest.approx(lrs[2][0], rel=1e-3)   # ...and the logged lr moved them


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
def test_info_reports_the_optimizer_state_that_init_builds(state_dtype, capsys):
    args = ["--config=configs/smoke.py:tiny", f"--config.optim.state_dtype={state_dtype}"]
    assert cli.main(["info", *args, "--json"]) in (0, None)
    reported = json.loads(capsys.readouterr().out)["adam_state_bytes"]
    c = tiny(f"--config.optim.state_dtype={state_dtype}")
    state = create_train_state(c, sharding.single_device_mesh())
    assert reported == sum(x.nbytes for x in jax.tree.leaves(state.opt_state))


def compiled_grad_flops(remat):
    """FLOPs of the compiled gradient of the unrolled tiny model (XLA:CPU)."""
    c = tiny("--config.model.scan_layers=False", f"--config.model.remat={remat}")
    model = GPT(GPTConfig.from_config(c.model))
    tokens = jnp.zeros((8, 16), jnp.int32)
    params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), tokens[:1])["params"]))

    def f(p):
        return model.apply({"params": p}, tokens, hidden=True).astype(jnp.float32).var()
    cost = jax.jit(jax.grad(f)).lower(params).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_remat_recomputes_unrolled_layers():
    """XLA:CPU recomputes, but schedules the recomputation early, so its memory does not drop:
    the memory side is the TPU compiler's test below."""
    assert compiled_grad_flops("full") > 1.2 * compiled_grad_flops("none")


@pytest.mark.slow
@needs_libtpu
def test_remat_cuts_unrolled_memory_on_the_tpu_compiler():
    """configs/smoke.py at 8 unrolled layers, batch 64, v5e-1 (70-190 s of compiling): remat=full
    takes ~1/6 of the temporaries of remat=none (342 -> 56 MB) for ~22% more matmul FLOPs."""
    reports = {}
    for remat in ("none", "full"):
        c = get_config("configs/smoke.py", [
            "--config.model.scan_layers=False", f"--config.model.remat={remat}",
            "--config.train.batch_size=64", "--config.model.num_layers=8"])
        reports[remat] = compile_config(c, parse_topology("v5e-1"), eval_step=False)
    none, full = reports["none"], reports["full"]
    assert full["memory"]["temp_bytes"] < 0.5 * none["memory"]["temp_bytes"]
    assert full["flops"]["xla_matmul"] > 1.15 * none["flops"]["xla_matmul"]


def compiled_step(mesh, accum, reduce_dtype="float32", config="configs/smoke.py:tiny",
                  batch=32, seq_len=16):
    """The train step compiled for 8 CPU devices (data x fsdp = `mesh`)."""
    c = get_config(config, [
        f"--config.train.grad_accum={accum}", f"--config.mesh.data={mesh[0]}",
        f"--config.mesh.fsdp={mesh[1]}", f"--config.train.batch_size={batch}",
        f"--config.data.seq_len={seq_len}", f"--config.optim.grad_reduce_dtype={reduce_dtype}"])
    m = sharding.make_mesh(c.mesh)
    abstract, shardings = abstract_train_state(c, m)
    tokens = {k: jax.ShapeDtypeStruct((batch, seq_len), jnp.int32,
                                      sharding=sharding.batch_sharding(m))
              for k in ("inputs", "targets")}
    step = steps.make_train_step(c, m, shardings)
    with jax.set_mesh(m):
        return step.lower(with_shardings(abstract, shardings), tokens).compile()


def gradient_reduction_bytes(mesh, accum, reduce_dtype="float32"):
    """Bytes all-reduced / reduce-scattered per device in one compiled train step (loop bodies
    counted as often as they run) of the tiny model on 8 CPU devices."""
    collectives = hlo.analyze(compiled_step(mesh, accum, reduce_dtype).as_text())["collectives"]
    return sum(collectives.get(k, {}).get("bytes", 0) for k in ("all-reduce", "reduce-scatter"))


def test_float32_reduction_holds_no_whole_gradient_without_accumulation():
    """FSDP over 8 devices, grad_accum=1, 1 row of 16 tokens per device: the float32 reduction
    takes no more temporaries than the compute-dtype one (it held a whole float32 gradient
    per device, 5.9 MB of temporaries against 3.3 MB)."""
    def temp_bytes(reduce_dtype):
        compiled = compiled_step((1, 8), 1, reduce_dtype, "configs/smoke.py", batch=8)
        return compiled.memory_analysis().temp_size_in_bytes
    assert temp_bytes("float32") <= 1.05 * temp_bytes("bfloat16")


@pytest.mark.parametrize("mesh", [(8, 1), pytest.param((2, 4), marks=pytest.mark.slow)])
def test_accumulation_reduces_gradients_once_per_step(mesh):
    one = gradient_reduction_bytes(mesh, 1)
    assert gradient_reduction_bytes(mesh, 4) <= 1.01 * one  # was 4x: once per micro-batch


@pytest.mark.slow
def test_bfloat16_reduction_reduces_every_micro_batch():
    one = gradient_reduction_bytes((8, 1), 1, "bfloat16")
    assert gradient_reduction_bytes((8, 1), 4, "bfloat16") > 3 * one


@pytest.mark.parametrize("mesh,accum", [((2, 2, 2), 2), ((1, 4, 2), 1)])
def test_float32_reduction_equals_one_device(mesh, accum):
    """The per-shard gradients, summed once (reduce-scatter over fsdp, all-reduce over data),
    equal the single-device gradient of the same masked batch."""
    batch = masked_batch(tiny())
    ref_loss, ref_grads = loss_and_grads(1, batch)
    c = tiny(f"--config.train.grad_accum={accum}", f"--config.mesh.data={mesh[0]}",
             f"--config.mesh.fsdp={mesh[1]}", f"--config.mesh.tensor={mesh[2]}")
    m = sharding.make_mesh(c.mesh)
    _, shardings = abstract_train_state(c, m)
    params = create_train_state(c, m).params
    fn = jax.jit(steps.make_loss_and_grads(c, param_shardings=shardings.params),
                 out_shardings=(sharding.replicated(m), shardings.params))
    with jax.set_mesh(m):
        loss, grads = fn(params, sharding.global_batch(batch, m), jax.random.key(0))
    assert abs(float(loss) - ref_loss) <= 2e-6 * abs(ref_loss)
    assert max_rel(jax.device_get(grads), ref_grads) <= 2e-5


@pytest.mark.slow
@needs_libtpu
def test_gradients_are_reduced_in_the_chosen_dtype_on_the_tpu_compiler():
    """configs/smoke.py, FSDP over v5e-4, bfloat16 compute, grad_accum=1: with the float32
    reduction no all-reduce or reduce-scatter moves bfloat16; with bfloat16 the kernels'
    gradients do (XLA:CPU runs every bfloat16 collective in float32: no test there)."""
    def bf16_reduced(reduce_dtype):
        c = get_config("configs/smoke.py", ["--config.mesh.data=1", "--config.mesh.fsdp=-1",
                                            f"--config.optim.grad_reduce_dtype={reduce_dtype}"])
        dtypes = compile_config(c, parse_topology("v5e-4"), eval_step=False)["collective_dtypes"]
        return sum(dtypes.get(kind, {}).get("bf16", {}).get("bytes", 0)
                   for kind in ("all-reduce", "reduce-scatter"))
    assert bf16_reduced("float32") == 0
    assert bf16_reduced("bfloat16") > 0
