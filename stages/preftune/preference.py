"""Preference optimisation (DPO and its variants) on pairs, with precomputed reference log-probs.

The reference model never runs during training: its log-probs depend only on the data and the SFT
weights, so the `reference` stage computes them once and every beta, loss or lr reuses them. With a
LoRA policy the policy at step 0 *is* the SFT model (LoRA's B matrix starts at zero), so the
reference log-probs equal the adapter-disabled policy's, and no second copy of the weights is needed.
"""

from __future__ import annotations

import logging
import warnings

import torch
from tqdm import tqdm

from .batching import Sequence, batch_order, collate
from .logprobs import sequence_logprobs
from .losses import LOSSES, NEEDS_KL_ESTIMATE, PairLogps, pair_diagnostics, preference_loss
from .errors import ConfigError
from .schema import SCHEMA, validate
from .training import adamw, log_metrics, to_device, warmup_cosine

log = logging.getLogger(__name__)
EPOCH_METRICS = ("loss", "pair_accuracy", "kl_chosen", "kl_rejected", "implicit_r_w", "implicit_r_l", "margin")


def check_config(cfg: dict) -> None:
    """The dpo section: types and ranges from schema.py, then what only the losses know."""
    validate(cfg, SCHEMA["dpo"], "dpo.")
    if cfg["loss"] not in LOSSES:
        raise ConfigError(f"params.yaml: dpo.loss: unknown loss '{cfg['loss']}'; use one of {', '.join(sorted(LOSSES))}")
    if cfg["loss"] == "ipo" and cfg["beta"] == 0:
        raise ConfigError("params.yaml: dpo.beta: ipo's target margin is 1/(2 beta), so beta must be > 0")
    if cfg["beta"] == 0:
        warnings.warn("dpo.beta is 0: the DPO loss is log 2 for every policy and its gradient is zero; "
                      "training will not move (the seed's 'break it' exercise)")


class PairBatcher:
    """Turns index lists into one padded batch holding chosen then rejected (one forward for both)."""

    def __init__(self, encoded: dict[str, list[Sequence]], reference: dict[str, torch.Tensor] | None, pad_id: int, device):
        self.encoded, self.reference, self.pad, self.device = encoded, reference, pad_id, device

    def policy_and_reference(self, model, idx: list[int], self_reference: bool, needs_kl: bool) -> PairLogps:
        seqs = [self.encoded["chosen"][i] for i in idx] + [self.encoded["rejected"][i] for i in idx]
        sums, counts = sequence_logprobs(model, to_device(collate(seqs, self.pad), self.device))
        b = len(idx)
        pc, pr = sums[:b], sums[b:]
        if self_reference:  # the seed's exercise: the policy is its own (moving) reference
            rc, rr = pc.detach(), pr.detach()
        else:
            rc = self.reference["chosen"][idx].to(self.device)
            rr = self.reference["rejected"][idx].to(self.device)
        kl = None
        if needs_kl:
            with torch.no_grad():
                mis = [self.encoded["mismatched"][i] for i in idx]
                pm, _ = sequence_logprobs(model, to_device(collate(mis, self.pad), self.device))
                ref_m = pm if self_reference else self.reference["mismatched"][idx].to(self.device)
                kl = (pm - ref_m).mean().clamp(min=0)
        return PairLogps(pc, pr, rc, rr, counts[:b], counts[b:], kl)


def loss_options(cfg: dict) -> dict:
    return {"label_smoothing": cfg["label_smoothing"], "simpo_gamma": cfg["simpo_gamma"],
            "orpo_lambda": cfg["orpo_lambda"]}


@torch.no_grad()
def evaluate(model, batcher: PairBatcher, n: int, cfg: dict, batch_size: int = 32) -> dict:
    """Loss and diagnostics on a whole split, pair-weighted means."""
    model.eval()
    totals: dict[str, float] = {}
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        logps = batcher.policy_and_reference(model, idx, cfg["reference"] == "self", cfg["loss"] in NEEDS_KL_ESTIMATE)
        stats = pair_diagnostics(logps, cfg["beta"])
        stats["loss"] = preference_loss(cfg["loss"], logps, cfg["beta"], loss_options(cfg)).mean().item()
        for k in EPOCH_METRICS:
            totals[k] = totals.get(k, 0.0) + stats[k] * len(idx)
    return {k: v / n for k, v in totals.items()}


def train_preferences(model, train: PairBatcher, heldout: PairBatcher, n_train: int, n_heldout: int, cfg: dict,
                      seed: int, epoch_live=None, step_live=None) -> list[dict]:
    """Optimise the trainable parameters of `model` on preference pairs; returns per-epoch metrics."""
    check_config(cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("the policy has no trainable parameters (loss would stay at log 2); check dpo.lora")
    steps = -(-n_train // cfg["batch_size"]) * cfg["epochs"]
    optimizer = adamw(trainable, cfg["lr"], cfg["weight_decay"])
    scheduler = warmup_cosine(optimizer, steps, cfg["warmup_steps"], cfg["schedule"])
    lengths = [len(train.encoded["chosen"][i].ids) + len(train.encoded["rejected"][i].ids) for i in range(n_train)]
    history = []
    for epoch in range(1, cfg["epochs"] + 1):
        model.train()
        totals: dict[str, float] = {}
        for idx in tqdm(batch_order(lengths, cfg["batch_size"], seed + epoch), desc=f"dpo epoch {epoch}", leave=False):
            logps = train.policy_and_reference(model, idx, cfg["reference"] == "self", cfg["loss"] in NEEDS_KL_ESTIMATE)
            loss = preference_loss(cfg["loss"], logps, cfg["beta"], loss_options(cfg)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg["max_grad_norm"]).item()
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            stats = pair_diagnostics(logps, cfg["beta"])
            stats["loss"] = loss.item()
            for k in EPOCH_METRICS:
                totals[k] = totals.get(k, 0.0) + stats[k] * len(idx)
            if step_live is not None:
                log_metrics(step_live, {**{k: stats[k] for k in EPOCH_METRICS}, "grad_norm": grad_norm})
                step_live.log_metric("lr", lr)  # unrounded: a decayed lr can be far below 1e-6
                step_live.next_step()
        metrics = {f"train_{k}": v / n_train for k, v in totals.items()}
        metrics.update({f"heldout_{k}": v for k, v in evaluate(model, heldout, n_heldout, cfg).items()})
        history.append(metrics)
        log.info("epoch %d: loss %.4f acc %.3f kl_w %+.3f kl_l %+.3f | held-out loss %.4f acc %.3f", epoch,
                 metrics["train_loss"], metrics["train_pair_accuracy"], metrics["train_kl_chosen"],
                 metrics["train_kl_rejected"], metrics["heldout_loss"], metrics["heldout_pair_accuracy"])
        if epoch_live is not None:
            log_metrics(epoch_live, {k.replace("_", "/", 1): v for k, v in metrics.items()})  # train/loss, heldout/loss
            epoch_live.next_step()
    return history
