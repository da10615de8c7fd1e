"""Log-probabilities of responses under a causal LM: the one place where logits become log-probs.

The vocabulary projection is where memory goes: batch x length x vocabulary floats (805 MB for 16 x 256
tokens of a 49k vocabulary), kept again by log-softmax for the backward pass. So we never build it whole.
The model runs with `logits_to_keep=1` and returns its final hidden states; the output head is applied
only at response positions (prompt positions are masked out anyway), `chunk_tokens` positions at a time,
and each chunk is checkpointed, so the backward pass recomputes one chunk's logits instead of storing all
of them. log p(token) = logit(token) - logsumexp(logits), in fp32 whatever the model's dtype.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_TOKENS = 1024  # positions per chunk: 1024 x 49,152 fp32 logits = 201 MB at most, at any vocabulary size


def _chunk_logps(head, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:  # Gemma-2 style final-logit soft-capping, applied by the model's own forward
        logits = softcap * torch.tanh(logits / softcap)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def full_vocab_token_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The plain computation: all logits, a full fp32 log-softmax, then gather (B, T-1), zero off the response.
    For architectures without `logits_to_keep`, and the baseline the chunked path is tested and measured against."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets, mask = batch["input_ids"][:, 1:], batch["response_mask"][:, 1:]
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, targets.unsqueeze(-1)).squeeze(-1) * mask


def unwrapped(model):
    """The model itself, inside a peft wrapper (which forwards kwargs to it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def accepts_logits_to_keep(model) -> bool:
    return _forward_takes_logits_to_keep(type(unwrapped(model)))


@functools.cache
def _forward_takes_logits_to_keep(cls) -> bool:  # once per model class, not on every training step
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def token_logprobs(model, batch: dict[str, torch.Tensor],
                   chunk_tokens: int = CHUNK_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(response token | everything before it), and the mask of response tokens.

    Both are (B, T-1): position t scores token t+1; off the response the log-prob is 0.
    """
    targets = batch["input_ids"][:, 1:]
    mask = batch["response_mask"][:, 1:]
    if not accepts_logits_to_keep(model):  # an architecture without the option
        return full_vocab_token_logprobs(model, batch), mask
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                logits_to_keep=1, output_hidden_states=True)
    hidden = out.hidden_states[-1][:, :-1]  # after the final norm: what the output head reads
    where = mask.nonzero(as_tuple=True)
    flat = response_logps(unwrapped(model), hidden[where], targets[where], chunk_tokens)
    logps = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)
    logps = logps.index_put(where, flat)  # out of place: autograd carries the gradient back to the chunks
    return logps, mask


class _FrozenHeadLogps(torch.autograd.Function):
    """log p(target) through a frozen linear output head, its gradient with respect to the hidden states taken in
    the forward pass: d log p(t) / d h = W[t] - softmax(h W^T) W. The checkpointed path pays the head's matmul
    three times (forward, recomputed forward, backward) and its log-softmax twice; this pays two matmuls and one
    log-softmax, and keeps one chunk-sized gradient instead of the chunk's inputs. Exact: the upstream gradient of
    each log-prob is a scalar that only scales its row."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        logits = F.linear(hidden, weight, bias).float()
        logp = torch.log_softmax(logits, dim=-1)
        del logits
        picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        grad = logp.exp_()  # softmax, in place
        grad.scatter_add_(-1, targets.unsqueeze(-1), grad.new_full((len(targets), 1), -1.0))  # softmax - onehot
        ctx.save_for_backward((grad.to(weight.dtype) @ weight).neg_())  # d log p(t) / d hidden
        return picked

    @staticmethod
    def backward(ctx, upstream):
        (grad,) = ctx.saved_tensors
        return (upstream.unsqueeze(-1) * grad).to(grad.dtype), None, None, None


def _frozen_linear(head, width: int) -> bool:
    """A plain, frozen, whole (not sharded away) linear head over `width` features (LoRA leaves the output layer
    alone): the one-pass gradient applies. FSDP's wrapped classes and ZeRO-3's partitioned weights take the
    checkpointed path."""
    weight, bias = getattr(head, "weight", None), getattr(head, "bias", None)
    return (type(head) is torch.nn.Linear and weight is not None and not weight.requires_grad and weight.dim() == 2
            and weight.shape[1] == width and (bias is None or not bias.requires_grad))


def response_logps(core, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int = CHUNK_TOKENS) -> torch.Tensor:
    """log p(target) for each (final hidden state, target id) pair (N, hidden) -> (N,): the output head of `core`
    (the model itself, not a peft wrapper), `chunk_tokens` rows at a time. Under grad, each chunk is checkpointed,
    or, through a frozen linear head, differentiated in its forward pass (_FrozenHeadLogps)."""
    head = core.get_output_embeddings()
    softcap = getattr(core.config, "final_logit_softcapping", None)
    one_pass = torch.is_grad_enabled() and hidden.requires_grad and not softcap and _frozen_linear(head, hidden.shape[-1])
    pieces = []
    for start in range(0, len(targets), chunk_tokens):
        h, t = hidden[start:start + chunk_tokens], targets[start:start + chunk_tokens]
        if one_pass:
            pieces.append(_FrozenHeadLogps.apply(h, head.weight, head.bias, t))
        elif torch.is_grad_enabled():  # keep only the chunk's inputs; its logits are rebuilt in backward
            pieces.append(checkpoint(_chunk_logps, head, h, t, softcap, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(head, h, t, softcap))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def sequence_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-prob per sequence (B,), and the response token count (B,)."""
    logps, mask = token_logprobs(model, batch)
    return logps.sum(-1), mask.sum(-1).float()


class ResponseLogprobs(torch.nn.Module):
    """A causal LM as a module whose forward returns (summed response log-probs, response token counts).

    This is what training hands to accelerate: DDP and FSDP wrap a module's forward, so the output head, which
    `token_logprobs` applies outside the LM's own forward, must run inside this one (under FSDP the head's
    weights exist in full only during the wrapped forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self._no_split_modules = getattr(model, "_no_split_modules", None)  # FSDP shards the LM layer by layer

    def forward(self, input_ids, attention_mask, response_mask):
        return sequence_logprobs(self.model, {"input_ids": input_ids, "attention_mask": attention_mask,
                                              "response_mask": response_mask})
