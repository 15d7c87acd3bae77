"""Hugging Face GPT-2 <-> gptjax: `gptjax convert import|export`.

The `transformers` GPT2LMHeadModel layout (Conv1D weights are [in, out]):

    transformer.wte.weight [V, d]          -> wte/embedding [padded_V, d] (zero rows appended)
    transformer.wpe.weight [T, d]          -> wpe [T, d]
    h.i.ln_1.{weight,bias}                 -> ln1/{scale,bias}      (ln_2 -> ln2, ln_f -> ln_f)
    h.i.attn.c_attn.weight [d, 3d]         -> attn/qkv/kernel [d, 3, heads, head_dim]
    h.i.attn.c_attn.bias [3d]              -> attn/qkv/bias [3, heads, head_dim]
    h.i.attn.c_proj.weight [d, d]          -> attn/proj/kernel [heads, head_dim, d]
    h.i.mlp.c_fc.weight [d, 4d]            -> mlp/fc/kernel        (c_proj -> mlp/proj)
    lm_head.weight                         tied to wte (an untied one becomes head/kernel)

GPT-2's gelu_new is gelu(approximate=True), as in model.py. Weights are read with
`safetensors.numpy` (no torch needed) or, for `pytorch_model.bin`, with torch if installed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import numpy as np

from gptjax.config.loader import load_config
from gptjax.data.hf_tokenizer import EXPORT_FILES, HFTokenizer
from gptjax.data.hf_tokenizer import export as export_tokenizer
from gptjax.errors import UserError
from gptjax.inference import quantization as quant
from gptjax.model.gpt import GPTConfig
from gptjax.model.layouts import layers_to_scanned, scanned_to_layers
from gptjax.storage import paths
from gptjax.workdir import open_run, save_tokenizer, write_params

PREFIX = "transformer."


# ----------------------------------------------------------------------------- configs


def config_from_hf(hf: dict, vocab_multiple: int = 128) -> dict:
    """HF GPT2Config (config.json as a dict) -> the keys of `config.model` it determines."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"model_type={hf.get('model_type')!r}: only GPT-2 checkpoints convert")
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(key):
            raise UserError(f"HF config sets {key}=True, which gptjax's attention does not do")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"activation_function={act!r}: gptjax uses tanh-approximate GELU "
                        f"(gelu_new)")
    d, heads = hf.get("n_embd", 768), hf.get("n_head", 12)
    return dict(vocab_size=hf.get("vocab_size", 50257), vocab_multiple=vocab_multiple,
                num_layers=hf.get("n_layer", 12), d_model=d, num_heads=heads,
                head_dim=d // heads, d_ff=hf.get("n_inner") or 4 * d,
                max_seq_len=hf.get("n_positions", 1024), position="learned", use_bias=True,
                tie_embeddings=hf.get("tie_word_embeddings", True),
                layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5))


def config_to_hf(c: GPTConfig) -> dict:
    """A GPT-2-shaped gptjax model config -> HF GPT2Config dict (raises if not GPT-2-shaped)."""
    problems = []
    if c.position != "learned":
        problems.append(f"position={c.position!r} (GPT-2 learns positions)")
    if not c.use_bias:
        problems.append("use_bias=False (GPT-2 has biases)")
    if c.num_heads * c.head_dim != c.d_model:
        problems.append(f"num_heads*head_dim={c.num_heads * c.head_dim} != d_model={c.d_model}")
    if c.local_window:
        problems.append("local_window > 0 (GPT-2 attends densely)")
    if problems:
        raise UserError("cannot export as GPT-2: " + "; ".join(problems))
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": c.vocab_size, "n_positions": c.max_seq_len, "n_ctx": c.max_seq_len,
            "n_embd": c.d_model, "n_layer": c.num_layers, "n_head": c.num_heads,
            "n_inner": c.d_ff, "activation_function": "gelu_new",
            "layer_norm_epsilon": c.layer_norm_eps, "tie_word_embeddings": c.tie_embeddings,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


# ----------------------------------------------------------------------------- weights


def _strip(state: dict) -> dict:
    """Drops the `transformer.` prefix and non-parameter buffers (old attn.bias masks)."""
    out = {}
    for k, v in state.items():
        k = k[len(PREFIX):] if k.startswith(PREFIX) else k
        if k.endswith(("attn.masked_bias",)) or (k.endswith("attn.bias") and np.ndim(v) == 4):
            continue
        out[k] = np.asarray(v, np.float32)
    return out


def hf_to_params(state: dict, c: GPTConfig) -> dict:
    """HF GPT2LMHeadModel state dict (numpy) -> gptjax params (scanned if c.scan_layers)."""
    s = _strip(state)
    d, n, h = c.d_model, c.num_heads, c.head_dim

    def take(key, shape=None):
        if key not in s:
            raise UserError(f"GPT-2 checkpoint has no {key!r}")
        w = s.pop(key)
        if shape is not None:
            w = w.reshape(shape)
        return w

    def norm(name):
        return {"scale": take(f"{name}.weight"), "bias": take(f"{name}.bias")}

    wte = take("wte.weight")
    params = {"wte": {"embedding": _pad_rows(wte, c.padded_vocab)},
              "wpe": take("wpe.weight"), "ln_f": norm("ln_f")}
    for i in range(c.num_layers):
        p = f"h.{i}."
        params[f"layer_{i}"] = {
            "ln1": norm(p + "ln_1"), "ln2": norm(p + "ln_2"),
            "attn": {"qkv": {"kernel": take(p + "attn.c_attn.weight", (d, 3, n, h)),
                             "bias": take(p + "attn.c_attn.bias", (3, n, h))},
                     "proj": {"kernel": take(p + "attn.c_proj.weight", (n, h, d)),
                              "bias": take(p + "attn.c_proj.bias")}},
            "mlp": {"fc": {"kernel": take(p + "mlp.c_fc.weight"),
                           "bias": take(p + "mlp.c_fc.bias")},
                    "proj": {"kernel": take(p + "mlp.c_proj.weight"),
                             "bias": take(p + "mlp.c_proj.bias")}},
        }
    head = s.pop("lm_head.weight", None)
    if c.tie_embeddings:
        if head is not None and not np.array_equal(head, wte):
            raise UserError("lm_head.weight differs from wte: set tie_word_embeddings=false in "
                            "config.json to import an untied head")
    else:
        if head is None:
            raise UserError("tie_word_embeddings=false but the checkpoint has no lm_head.weight")
        params["head"] = {"kernel": _pad_rows(head, c.padded_vocab).T}
    if s:
        raise UserError(f"unexpected GPT-2 weights: {sorted(s)[:5]}")
    params = jax.tree.map(lambda x: np.asarray(x, c.param_dtype), params)
    return layers_to_scanned(params, c) if c.scan_layers else params


def params_to_hf(params, c: GPTConfig) -> dict:
    """gptjax params -> HF GPT2LMHeadModel state dict of float32 numpy arrays."""
    config_to_hf(c)  # raises if not GPT-2-shaped
    p = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    if "layers" in p:
        p = scanned_to_layers(p, c)
    d = c.d_model
    out = {"transformer.wte.weight": p["wte"]["embedding"][:c.vocab_size],
           "transformer.wpe.weight": p["wpe"],
           "transformer.ln_f.weight": p["ln_f"]["scale"],
           "transformer.ln_f.bias": p["ln_f"]["bias"]}
    for i in range(c.num_layers):
        layer, pre = p[f"layer_{i}"], f"transformer.h.{i}."
        attn, mlp = layer["attn"], layer["mlp"]
        out.update({
            pre + "ln_1.weight": layer["ln1"]["scale"], pre + "ln_1.bias": layer["ln1"]["bias"],
            pre + "ln_2.weight": layer["ln2"]["scale"], pre + "ln_2.bias": layer["ln2"]["bias"],
            pre + "attn.c_attn.weight": attn["qkv"]["kernel"].reshape(d, 3 * d),
            pre + "attn.c_attn.bias": attn["qkv"]["bias"].reshape(3 * d),
            pre + "attn.c_proj.weight": attn["proj"]["kernel"].reshape(d, d),
            pre + "attn.c_proj.bias": attn["proj"]["bias"],
            pre + "mlp.c_fc.weight": mlp["fc"]["kernel"], pre + "mlp.c_fc.bias": mlp["fc"]["bias"],
            pre + "mlp.c_proj.weight": mlp["proj"]["kernel"],
            pre + "mlp.c_proj.bias": mlp["proj"]["bias"],
        })
    out["lm_head.weight"] = (out["transformer.wte.weight"] if c.tie_embeddings
                             else p["head"]["kernel"].T[:c.vocab_size])
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _pad_rows(w, rows: int):
    return np.concatenate([w, np.zeros((rows - w.shape[0],) + w.shape[1:], w.dtype)])


# ----------------------------------------------------------------------------- files


def _resolve(source: str, patterns=("config.json", "*.safetensors", "pytorch_model.bin",
                                      "tokenizer.json")) -> str:
    """A local directory / weights file, or a hub model name (downloaded when online)."""
    if os.path.exists(source):
        return source
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(f"{source!r} is not a local path, and huggingface_hub is not installed "
                        f"to fetch it from the hub (pip install 'gptjax[interop]')") from None
    try:
        return snapshot_download(source, allow_patterns=list(patterns))
    except Exception as e:  # offline, unknown repo, ...: one line for the user
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"could not fetch {source!r} from the Hugging Face hub (offline? give a "
                        f"local checkpoint directory instead): {type(e).__name__}: {first}") \
            from None


def load_hf(source: str) -> tuple[dict, dict]:
    """-> (HF config dict, state dict of numpy arrays) from a directory, file or hub name."""
    path = _resolve(source)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise UserError(f"no config.json beside {path}: a Hugging Face GPT-2 checkpoint "
                        f"directory has config.json and model.safetensors (or pytorch_model.bin)")
    with open(config_path) as f:
        hf_config = json.load(f)
    if os.path.isdir(path):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise UserError(f"{path} holds neither model.safetensors nor pytorch_model.bin")
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise UserError("reading .safetensors needs `pip install safetensors` "
                            "(or 'gptjax[interop]')") from None
        return hf_config, load_file(path)
    try:
        import torch
    except ImportError:
        raise UserError(f"{path} is a PyTorch state dict: reading it needs torch; or convert "
                        f"it to model.safetensors") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return hf_config, {k: v.float().numpy() for k, v in state.items()}


def save_hf(directory: str, params, c: GPTConfig, eos_id: int | None = None) -> None:
    """Writes config.json + model.safetensors that GPT2LMHeadModel.from_pretrained reads;
    `eos_id`: the tokenizer's EOS, which becomes the config's bos/eos_token_id (generation
    stops there, as `gptjax sample` does)."""
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise UserError("exporting needs `pip install safetensors` (or 'gptjax[interop]')") \
            from None
    state = params_to_hf(params, c)
    state.pop("lm_head.weight") if c.tie_embeddings else None  # tied: HF re-ties on load
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({**config_to_hf(c), "bos_token_id": eos_id, "eos_token_id": eos_id}, f,
                  indent=2)
    save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})


def hf_tokenizer(source: str) -> HFTokenizer:
    """The tokenizer.json beside a HF checkpoint (a directory, file or hub name)."""
    path = _resolve(source, patterns=["tokenizer.json"])
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    file = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(file):
        raise UserError(f"no tokenizer.json in {directory}: it is needed to tokenize text for "
                        f"this model")
    return HFTokenizer(file)


def import_to_workdir(source: str, workdir: str, base_config: str = "configs/gpt2.py") -> dict:
    """Writes WORKDIR/config.json and a step-0 checkpoint holding the imported params (and
    hf_tokenizer.json when the checkpoint has a tokenizer.json)."""
    hf_config, state = load_hf(source)
    config = load_config(base_config)
    model_keys = config_from_hf(hf_config, int(config.model.vocab_multiple))
    try:
        tokenizer = hf_tokenizer(source)
    except UserError as e:
        tokenizer = None
        print(f"gptjax: note: no tokenizer imported ({e}); sampling text needs one")
    with config.unlocked():
        config.model.update(model_keys)
        config.model.param_dtype = "float32"
        if tokenizer is not None:
            config.data.tokenizer.kind = "hf"   # the workdir's hf_tokenizer.json
            config.data.tokenizer.path = ""
        else:   # ids only: no text, and a stand-in tokenizer of model.vocab_size
            config.data.source = "synthetic"
        config.data.seq_len = min(int(config.data.seq_len), int(config.model.max_seq_len))
    c = GPTConfig.from_config(config.model)
    params = hf_to_params(state, c)
    write_params(workdir, config, params)
    if tokenizer is not None:
        save_tokenizer(workdir, tokenizer)
    return {"workdir": workdir, "layers": c.num_layers, "d_model": c.d_model,
            "vocab_size": c.vocab_size}


def export_workdir(workdir: str, out: str) -> tuple[int, str | None]:
    """Writes a workdir's newest params and its tokenizer as an HF GPT-2 directory `out`
    (local) that transformers loads as is -> (their step, the tokenizer's kind, or None for a
    workdir of token ids only)."""
    if paths.is_url(out):
        raise UserError(f"--out {out}: HF exports are written to a local directory "
                        f"(then copy it, e.g. gcloud storage cp -r)")
    config, params, tokenizer, step = open_run(workdir)
    if quant.is_quantized(params):
        raise UserError(f"{workdir} holds quantized weights (`gptjax quantize`): export the "
                        f"float run it was made from")
    c = GPTConfig.from_config(config.model)
    config_to_hf(c)  # refuses a model GPT-2 cannot hold before anything is written
    with tempfile.TemporaryDirectory() as tmp:  # the tokenizer can refuse too: check it first
        kept = export_tokenizer(tokenizer, tmp, c.max_seq_len)
        save_hf(out, params, c, tokenizer.eos_id if kept else None)
        for name in EXPORT_FILES if kept else ():
            shutil.copy(os.path.join(tmp, name), os.path.join(out, name))
    return step, tokenizer.kind if kept else None
