"""Batched generation with left padding."""

from __future__ import annotations

import torch

from ..data.encoding import EVAL_BATCH, left_pad
from ..pipeline.progress import track


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = EVAL_BATCH,
                     sample: bool = False, seed: int = 0, desc: str = "generate", max_length: int | None = None,
                     stats: dict | None = None, temperature: float = 1.0) -> list[str]:
    """One answer per prompt: greedy by default, or sampled at `temperature` (seeded per batch).

    With `max_length`, prompt + answer stay within it as in training: a longer prompt keeps its last
    max_length - max_new_tokens tokens, and `stats["prompts_truncated"]` counts those prompts. With `stats`,
    `stats["finished"]` says per prompt whether its answer ended with EOS (False: cut at max_new_tokens).
    """
    model.eval()
    device = next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if max_length is not None:
        keep = max(max_length - max_new_tokens, 1)
        if stats is not None:
            stats["prompts_truncated"] = stats.get("prompts_truncated", 0) + sum(len(ids) > keep for ids in encoded)
        encoded = [ids[-keep:] for ids in encoded]
    # Sorting by length keeps left padding short; answers are put back in prompt order at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    by_index, finished = {}, {}
    for start in track(range(0, len(order), batch_size), f"{desc} ({len(prompts)})", unit="batches"):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in left_pad([encoded[i] for i in idx], tokenizer.pad_token_id).items()}
        if sample:
            torch.manual_seed(seed + start)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature if sample else None,
                             top_k=0 if sample else None, top_p=1.0 if sample else None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        for i, row in zip(idx, new_tokens):
            by_index[i] = tokenizer.decode(row, skip_special_tokens=True)
            finished[i] = bool((row == tokenizer.eos_token_id).any())
    if stats is not None:
        stats["finished"] = [finished[i] for i in range(len(prompts))]
    return [by_index[i] for i in range(len(prompts))]
