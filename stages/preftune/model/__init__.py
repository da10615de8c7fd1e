"""Models: loading, the scratch GPT-2, LoRA, log-probs, packing, generation, the reward model."""
