"""Padding-free pair batches (dpo.padding_free): a DPO micro-batch as one row of real tokens, with each pair's
prompt run once for both of its answers.

A padded batch runs every sequence to the longest one's length (a quarter of the positions at 1,024 tokens on
multi-turn chats, benchmarks/README.md) and runs each prompt twice, once before each answer. Here pair i becomes

    [ chosen_i (whole) | rejected_i after the prefix it shares with chosen_i ]

laid end to end with the other pairs: no pad token anywhere. Position ids restart for every sequence (the rejected
tail continues at the shared length), and attention runs segment by segment: a chosen sequence is causal on
itself, a rejected tail is causal on itself and sees the whole shared prefix. That is exactly what each sequence
sees when it runs alone, so log-probs and gradients equal the padded batch's up to float rounding
(tests/test_training.py); the shared prefix's activations receive the gradient of both answers, as the two copies
did. One difference is not rounding: LoRA dropout draws one mask for the shared prefix instead of one per copy.

The segments reach the attention through the model's forward kwargs; `PAIR_ATTENTION` is an attention
implementation registered with transformers that reads them, and runs plain SDPA (the model's own default) when a
batch has none, so padded batches (held-out metrics, KTO's KL estimate) go through it unchanged.

Packing is used by proof, not by exclusion: only on the architectures in `PACKING_PROVED`, each of which
tests/test_training.py shows equal to padded batches. A layer that carries state along the sequence (a mamba or
convolution block in a hybrid model) would run across the segments of a packed row, and no attention setting
shows that. And at the first packed batch of a run the first pairs run packed and padded once
(`check_packed_equals_padded`), so a model that ignores the segments stops the run instead of training on one
causal row.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..data.encoding import Sequence, collate, to_device
from ..pipeline.errors import UserError
from .logprobs import ResponseLogprobs, accepts_logits_to_keep, response_logps, unwrapped

log = logging.getLogger("dpo")

PAIR_ATTENTION = "preftune_pair_segments"
# config.model_type of the architectures whose packed log-probs and gradients tests/test_training.py has shown
# equal to padded ones (one test each, test_packed_pairs_give_the_padded_log_probs_and_gradients). SmolLM2,
# TinyLlama and Llama 2/3 are "llama"; Qwen2 and Qwen2.5 are "qwen2".
PACKING_PROVED = ("gpt2", "llama", "qwen2")
# The first-batch check: packed and padded log-probs of a sequence may differ by float rounding only, this much
# per scored token (bf16 autocast rounds at about 4e-3 relative; a missed segment moves log-probs by tenths).
CHECK_TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 2e-2}


def shared_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pack_pairs(chosen: list[Sequence], rejected: list[Sequence]) -> dict:
    """One padding-free row for pairs (chosen[i], rejected[i]). Sequence s (chosen 0..b-1, then rejected 0..b-1, the
    order `collate` uses) has its scored tokens at `targets[sequence == s]`, each predicted by the hidden state at
    row position `predictor`. `segments` cuts the row into attention segments, in order: (length, j, shared)
    means causal on itself after the first `shared` positions of segment j (j = -1, shared = 0: on itself only)."""
    ids: list[int] = []
    positions: list[int] = []
    segments: list[tuple[int, int, int]] = []
    predictor: list[int] = []
    targets: list[int] = []
    sequence: list[int] = []

    def score(seq: Sequence, s: int, where) -> None:
        first = max(seq.prompt_len, 1)  # nothing predicts a first token
        predictor.extend(where(t - 1) for t in range(first, len(seq.ids)))
        targets.extend(seq.ids[first:])
        sequence.extend([s] * (len(seq.ids) - first))

    b = len(chosen)
    for i, (c, r) in enumerate(zip(chosen, rejected)):
        start, own = len(ids), len(segments)
        ids.extend(c.ids)
        positions.extend(range(len(c.ids)))
        segments.append((len(c.ids), -1, 0))
        k, tail = shared_prefix(c.ids, r.ids), start + len(c.ids)
        if len(r.ids) > k:
            ids.extend(r.ids[k:])
            positions.extend(range(k, len(r.ids)))
            segments.append((len(r.ids) - k, own, k))
        score(c, i, lambda j: start + j)
        score(r, b + i, lambda j: start + j if j < k else tail + j - k)
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions]),
            "predictor": torch.tensor(predictor, dtype=torch.long), "targets": torch.tensor(targets, dtype=torch.long),
            "sequence": torch.tensor(sequence, dtype=torch.long), "sequences": 2 * b, "segments": segments}


def pair_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, segments=None,
                   **kwargs):
    """Attention over `segments` of a packed row (query/key/value: 1 x heads x T x head_dim); plain SDPA without."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        raise NotImplementedError("padding-free pairs do not implement sliding-window or soft-capped attention")
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: key/value heads serve `groups` query heads
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    # split, not one slice per segment: a slice's backward writes a zero tensor the size of the whole row
    lengths = [length for length, _, _ in segments]
    queries, keys, values = query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2)
    pieces = []
    for (length, j, shared), q, k, v in zip(segments, queries, keys, values):
        if shared:  # a rejected tail: the shared prefix (the start of segment j), then causal on itself
            k = torch.cat([keys[j][:, :, :shared], k], dim=2)
            v = torch.cat([values[j][:, :, :shared], v], dim=2)
            visible = torch.ones(length, shared + length, dtype=torch.bool, device=q.device).tril(shared)
            pieces.append(F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout, scale=scaling))
        else:
            pieces.append(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling))
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(PAIR_ATTENTION, pair_attention)
    AttentionMaskInterface.register(PAIR_ATTENTION, sdpa_mask)  # padded batches get SDPA's own mask


def supports_packing(model) -> str | None:
    """None when `model` can run packed pairs; else why not (its architecture, or the attention it uses)."""
    core = unwrapped(model)
    config = core.config
    if config.model_type not in PACKING_PROVED:
        return (f"packing is proved equal to padded batches only for {', '.join(PACKING_PROVED)}, and this model is "
                f"{config.model_type}")
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "it uses sliding-window attention"
    if getattr(config, "attn_logit_softcapping", None):
        return "it soft-caps attention logits"
    if not getattr(core, "_supports_attention_backend", False) or not accepts_logits_to_keep(model):
        return f"{type(core).__name__} does not take a pluggable attention"
    if config._attn_implementation not in ("sdpa", PAIR_ATTENTION):
        return f"it runs {config._attn_implementation} attention, not sdpa"
    return None


@torch.no_grad()
def check_packed_equals_padded(model, chosen: list[Sequence], rejected: list[Sequence], pad_id: int, device,
                               precision: str) -> None:
    """Run pairs (chosen[i], rejected[i]) packed and padded through `model` (a PackedPairLogprobs, or the wrapper
    around one) in eval mode, which draws no dropout bits, and stop with one line if a sequence's log-prob differs
    by more than rounding. Meant for the first packed batch of a run, on two pairs: the second pair shows whether
    the attention kept the first one out."""
    training = model.training
    model.eval()
    try:
        packed, _ = model(**to_device(pack_pairs(chosen, rejected), device))
        padded, tokens = model(**to_device(collate(chosen + rejected, pad_id), device))
    finally:
        model.train(training)
    gap = ((packed.float() - padded.float()).abs() / tokens.clamp(min=1)).max().item()
    if not gap <= CHECK_TOLERANCE[precision]:  # also catches NaN
        raise UserError(f"dpo.padding_free: packed pairs give other log-probs than padded ones on this model "
                        f"({gap:.3g} nats per token apart, more than rounding); set dpo.padding_free: false")
    log.info("dpo.padding_free: packed pairs checked against padded ones on the first batch (%.2g nats per token "
             "apart)", gap)


class PackedPairLogprobs(ResponseLogprobs):
    """ResponseLogprobs that also takes packed pair batches (pack_pairs): the model's attention becomes
    pair_attention, which is plain SDPA for padded batches (and is not saved with the model: config.json has no
    attention implementation)."""

    def __init__(self, model):
        super().__init__(model)
        _register()
        unwrapped(model).set_attn_implementation(PAIR_ATTENTION)

    def forward(self, input_ids, attention_mask=None, response_mask=None, position_ids=None, predictor=None,
                targets=None, sequence=None, sequences=None, segments=None):
        if segments is None:
            return super().forward(input_ids, attention_mask, response_mask)
        out = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=torch.ones_like(input_ids),
                         segments=segments, logits_to_keep=1, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1][0]  # (T, hidden) after the final norm
        logps = response_logps(unwrapped(self.model), hidden[predictor], targets)
        sums = torch.zeros(sequences, dtype=logps.dtype, device=logps.device).index_add(0, sequence, logps)
        return sums, torch.bincount(sequence, minlength=sequences).float()
