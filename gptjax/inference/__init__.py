"""Using a trained model: KV-cache generation (`generate.py`), sampling from a workdir
(`sample.py`), int8 / int4 / w8a8 quantization through Qwix (`quantization.py`), and Hugging Face
GPT-2 weights in and out (`hf_gpt2.py`).

May import: config, data, errors, model, parallel, storage, workdir.
"""
