"""Configs: `loader.py` reads `configs/FILE.py[:VARIANT]` and `--config.KEY=VALUE` overrides
(a typo is one line naming the nearest key); `defaults.py` lists every key with its default and
what it means.

May import: gptjax.errors.
"""
