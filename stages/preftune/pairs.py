"""Preference pairs as the model sees them: encoded chosen, rejected and mismatched sequences, and their
summed response log-probs in batches. Both the `reference` stage (once, under the SFT model) and `dpo` use
this; neither the preference losses nor the training loop live here, so editing those never reruns
`reference`. The reference file's key format is defined here too."""

from __future__ import annotations

import torch

from .batching import Encoder, Sequence, collate, to_device
from .logprobs import sequence_logprobs

KINDS = ("chosen", "rejected", "mismatched")
BATCH = 64  # sequences per forward when computing log-probs without gradients (the reference stage's batches)


def reference_key(split: str, kind: str) -> str:
    """Tensor name in data/reference/logps.safetensors: "<split>/<kind>", e.g. "train/chosen"."""
    return f"{split}/{kind}"


def encode_pairs(encode: Encoder, rows: list[dict]) -> dict[str, list[Sequence]]:
    """Chosen, rejected, and mismatched sequences: the prompt of pair i with the chosen answer of pair
    i+1, which KTO uses to estimate KL(policy || reference) without a gradient."""
    n = len(rows)
    return {"chosen": [encode(r["prompt"], r["chosen"]) for r in rows],
            "rejected": [encode(r["prompt"], r["rejected"]) for r in rows],
            "mismatched": [encode(rows[i]["prompt"], rows[(i + 1) % n]["chosen"]) for i in range(n)]}


@torch.no_grad()
def logprobs_of(model, sequences: list[Sequence], pad_id: int, device, batch_size: int = BATCH) -> torch.Tensor:
    model.eval()
    sums = [sequence_logprobs(model, to_device(collate(sequences[i:i + batch_size], pad_id), device))[0].cpu()
            for i in range(0, len(sequences), batch_size)]
    return torch.cat(sums) if sums else torch.zeros(0)
