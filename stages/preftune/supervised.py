"""Supervised fine-tuning: maximise the likelihood of the demonstrated responses (prompt masked)."""

from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from .batching import Encoder, batch_order, collate
from .logprobs import token_logprobs
from .training import adamw, log_metrics, to_device, warmup_cosine

log = logging.getLogger(__name__)


def response_nll(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of the response tokens (EOS included), and their count."""
    logps, mask = token_logprobs(model, batch)
    return -logps.sum(), mask.sum()


@torch.no_grad()
def mean_nll(model, sequences, pad_id: int, batch_size: int, device) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        nll, n = response_nll(model, to_device(collate(sequences[start:start + batch_size], pad_id), device))
        total, count = total + nll.item(), count + n.item()
    return total / max(count, 1)


def train_sft(model, tokenizer, demos: list[dict], heldout: list[dict], cfg: dict, max_length: int, seed: int,
              device, live=None) -> dict:
    """Train on (prompt, response) demonstrations; held-out loss is measured on the held-out pairs' chosen
    answers. Returns the last epoch's metrics; logs every epoch to `live`."""
    encode = Encoder(tokenizer, max_length)
    train_seqs = [encode(d["prompt"], d["response"]) for d in demos]
    heldout_seqs = [encode(r["prompt"], r["chosen"]) for r in heldout]
    pad = tokenizer.pad_token_id
    steps_per_epoch = -(-len(train_seqs) // cfg["batch_size"])
    total = steps_per_epoch * cfg["epochs"]
    optimizer = adamw(model.parameters(), cfg["lr"], cfg["weight_decay"])
    scheduler = warmup_cosine(optimizer, total, cfg["warmup_steps"])
    metrics: dict = {}
    for epoch in range(1, cfg["epochs"] + 1):
        model.train()
        total_nll, total_tokens = 0.0, 0
        order = batch_order([len(s.ids) for s in train_seqs], cfg["batch_size"], seed + epoch)
        for idx in tqdm(order, desc=f"sft epoch {epoch}", leave=False):
            nll, n = response_nll(model, to_device(collate([train_seqs[i] for i in idx], pad), device))
            loss = nll / n
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            total_nll, total_tokens = total_nll + nll.item(), total_tokens + n.item()
        metrics = {"train_loss": total_nll / total_tokens,
                   "heldout_loss": mean_nll(model, heldout_seqs, pad, 64, device) if heldout_seqs else None}
        log.info("epoch %d: train_loss %.4f heldout_loss %s", epoch, metrics["train_loss"],
                 f"{metrics['heldout_loss']:.4f}" if metrics["heldout_loss"] is not None else "n/a")
        if live is not None:
            log_metrics(live, metrics)
            live.next_step()
    metrics.update(encode.stats())
    return metrics
