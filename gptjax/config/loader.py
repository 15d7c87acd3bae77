"""Loading `configs/FILE.py[:ARG]` and applying `--config.a.b=value` overrides.

This follows ml_collections' `config_flags` convention (a file with `get_config(arg)`, dotted
overrides) without absl flags, so that every mistake becomes one `UserError` line naming the key.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os

import ml_collections

from gptjax.errors import UserError

ConfigDict = ml_collections.ConfigDict


def load_module(path: str):
    """Imports a config file by path (never as a package: `configs` is not installed)."""
    name = "gptjax_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resolve(path: str, spec: str) -> str:
    if not path.endswith(".py"):
        raise UserError(f"--config {spec!r}: expected a Python file like "
                        f"configs/smoke.py[:VARIANT]")
    if os.path.isfile(path):
        return path
    # gptjax/config/loader.py -> the checkout that holds gptjax/ (and configs/)
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), path)
    if os.path.isfile(here):  # a source checkout, run from elsewhere
        return here
    raise UserError(f"--config {spec!r}: no such file {path!r}")


def load_config(spec: str) -> ConfigDict:
    """`path/to/file.py[:VARIANT]` -> the ConfigDict of the file's `get_config([VARIANT])`.

    Every config file has one form: `get_config(variant=DEFAULT)` and, if it has variants, a
    module-level dict `VARIANTS` whose keys are the variant names (big_vision's `file.py:arg`).
    """
    path, _, variant = spec.partition(":")
    module = load_module(_resolve(path, spec))
    if not hasattr(module, "get_config"):
        raise UserError(f"--config {spec!r}: {path} defines no get_config()")
    names = list(getattr(module, "VARIANTS", {}))
    if variant and not names:
        raise UserError(f"--config {spec!r}: {path} has no variants; use --config {path}")
    if variant and variant not in names:
        hint = did_you_mean(variant, names)
        raise UserError(f"--config {spec!r}: unknown variant {variant!r}{hint}; {path} has "
                        f"{', '.join(names)}")
    config = module.get_config(variant) if variant else module.get_config()
    config.lock()  # unknown keys now raise instead of silently adding a field
    return config


def _flat_keys(config: ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        name = prefix + key
        keys.append(name)
        if isinstance(value, ConfigDict):
            keys.extend(_flat_keys(value, name + "."))
    return keys


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'X'?)' with the closest of `choices`, or '' when none is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _closest(key: str, config: ConfigDict) -> str:
    return did_you_mean(key, _flat_keys(config))


def _parse_value(key: str, text: str, current):
    """Parses `text` into the type of the value the key currently holds."""
    want = type(current)
    try:
        if isinstance(current, bool):
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError
            return lowered in ("true", "1")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if current is None:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
        value = ast.literal_eval(text)
        if isinstance(current, (tuple, list)):
            value = want(value) if isinstance(value, (tuple, list)) else want((value,))
        elif not isinstance(value, want):
            raise ValueError
        return value
    except (ValueError, SyntaxError):
        raise UserError(
            f"--config.{key}={text!r}: expected a value of type {want.__name__}"
        ) from None


def set_override(config: ConfigDict, key: str, text: str) -> None:
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
            raise UserError(f"unknown config key '{key}'{_closest(key, config)}")
        if i < len(parts) - 1:
            node = node[part]
    leaf, current = parts[-1], node[parts[-1]]
    if isinstance(current, ConfigDict):
        raise UserError(f"--config.{key} is a group; set one of its fields, e.g. --config.{key}."
                        f"{next(iter(current.keys()), 'x')}=...")
    with node.unlocked():
        node[leaf] = _parse_value(key, text, current)


def apply_overrides(config: ConfigDict, argv: list[str]) -> list[str]:
    """Applies `--config.k=v` / `--config.k v` from argv; returns the arguments left over."""
    rest = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" in body:
                key, text = body.split("=", 1)
            elif i + 1 < len(argv):
                key, text = body, argv[i + 1]
                i += 1
            else:
                raise UserError(f"{arg}: missing value (write {arg}=VALUE)")
            set_override(config, key, text)
        else:
            rest.append(arg)
        i += 1
    return rest


def get_config(spec: str, overrides: list[str] = ()) -> ConfigDict:
    config = load_config(spec)
    rest = apply_overrides(config, list(overrides))
    if rest:
        raise UserError(f"unrecognised arguments: {' '.join(rest)}")
    return config


def to_dict(config: ConfigDict) -> dict:
    return config.to_dict()


def from_dict(data: dict) -> ConfigDict:
    return ml_collections.ConfigDict(data)
