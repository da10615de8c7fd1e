"""Log-probabilities of responses under a causal LM: the one place where logits become log-probs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(response token | everything before it), and the mask of response tokens.

    Both are (B, T-1): position t scores token t+1. Log-softmax runs in fp32 whatever the model's
    dtype, because half-precision log-probs of a 50k vocabulary lose the differences DPO needs.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1, :].float()
    targets = batch["input_ids"][:, 1:]
    mask = batch["response_mask"][:, 1:]
    logps = torch.gather(F.log_softmax(logits, dim=-1), 2, targets.unsqueeze(-1)).squeeze(-1)
    return logps * mask, mask


def sequence_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-prob per sequence (B,), and the response token count (B,)."""
    logps, mask = token_logprobs(model, batch)
    return logps.sum(-1), mask.sum(-1).float()
