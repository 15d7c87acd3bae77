"""Commands that size a config without training it: `gptjax info`, `plan`, `compile`, `bench`,
`bench-decode`."""
