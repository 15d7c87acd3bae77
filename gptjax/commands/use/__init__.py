"""Commands that read a trained run: `gptjax eval`, `evaluate-tasks`, `sample`, `convert`,
`quantize`, `prune`, `trim`, `compress`."""
