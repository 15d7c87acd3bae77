"""Commands that make a run: `gptjax train`, `finetune`, `distill`, `sweep`, `data`, `plot`."""
