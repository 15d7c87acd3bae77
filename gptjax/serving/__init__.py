"""Serving a trained run over HTTP (`gptjax serve`): an OpenAI-compatible API (api.py) in front
of a continuous-batching engine (engine.py) whose compiled programs (batching.py) decode every
slot of a preallocated KV cache together, with per-request sampling settings as arrays."""
