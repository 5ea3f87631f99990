"""Stage 2: the LLM ranker (a causal LM fine-tuned with (Q)LoRA to pick the next item by its letter)."""
