"""Preference optimisation (DPO and its variants) on pairs, with precomputed reference log-probs.

The reference model never runs during training: its log-probs depend only on the data and the SFT
weights, so the `reference` stage computes them once and every beta, loss or lr reuses them. With a
LoRA policy the policy at step 0 *is* the SFT model (LoRA's B matrix starts at zero), so the
reference log-probs equal the adapter-disabled policy's, and no second copy of the weights is needed.
"""

from __future__ import annotations

import warnings

import torch

from .batching import Sequence, collate, to_device
from .logprobs import ResponseLogprobs
from .losses import LOSSES, NEEDS_KL_ESTIMATE, PairLogps, kto_unpaired_loss, pair_diagnostics, preference_loss
from .errors import ConfigError
from .schema import SCHEMA, validate
from .training import Objective, Run, fit, means

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
    """Turns index lists into one padded batch holding chosen then rejected (one forward for both). `model` is a
    ResponseLogprobs (as training prepared it, or not): its forward gives summed log-probs and token counts."""

    def __init__(self, encoded: dict[str, list[Sequence]], reference: dict[str, torch.Tensor] | None, pad_id: int, device):
        self.encoded, self.reference, self.pad, self.device = encoded, reference, pad_id, device

    def policy_and_reference(self, model, idx: list[int], self_reference: bool, needs_kl: bool) -> PairLogps:
        seqs = [self.encoded["chosen"][i] for i in idx] + [self.encoded["rejected"][i] for i in idx]
        sums, counts = model(**to_device(collate(seqs, self.pad), self.device))
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
                pm, _ = model(**to_device(collate(mis, self.pad), self.device))
                ref_m = pm if self_reference else self.reference["mismatched"][idx].to(self.device)
                kl = (pm - ref_m).mean().clamp(min=0)
        return PairLogps(pc, pr, rc, rr, counts[:b], counts[b:], kl)


def loss_options(cfg: dict) -> dict:
    return {"label_smoothing": cfg["label_smoothing"], "simpo_gamma": cfg["simpo_gamma"],
            "orpo_lambda": cfg["orpo_lambda"], "kto_desirable_weight": cfg["kto_desirable_weight"],
            "kto_undesirable_weight": cfg["kto_undesirable_weight"]}


def pair_step(batcher: PairBatcher, cfg: dict):
    """The DPO step's loss for the training loop: (summed loss, diagnostics summed over the pairs) of a batch."""
    def loss(model, idx: list[int]):
        logps = batcher.policy_and_reference(model, idx, cfg["reference"] == "self", cfg["loss"] in NEEDS_KL_ESTIMATE)
        losses = preference_loss(cfg["loss"], logps, cfg["beta"], loss_options(cfg))
        stats = pair_diagnostics(logps, cfg["beta"])
        return losses.sum(), {k: stats[k] * len(idx) for k in EPOCH_METRICS if k != "loss"}
    return loss


def pair_objective(run: Run, train: PairBatcher, heldout: PairBatcher, n_train: int, n_heldout: int,
                   cfg: dict) -> Objective:
    step = pair_step(train, cfg)

    def evaluate(model) -> dict:
        """Loss and diagnostics on the held-out pairs, pair-weighted means."""
        held = pair_step(heldout, cfg)

        def sums(idx):
            loss, stats = held(model, idx)
            return {"loss": loss, "pairs": len(idx), **stats}
        totals = run.evaluate_sums(n_heldout, 32, sums)
        return {f"heldout_{k}": totals[k] / totals["pairs"] for k in EPOCH_METRICS}

    lengths = [len(train.encoded["chosen"][i].ids) + len(train.encoded["rejected"][i].ids) for i in range(n_train)]
    return Objective(lengths=lengths, weight=len, loss=step, evaluate=evaluate)


UNPAIRED_METRICS = ("loss", "label_accuracy", "kl_chosen", "kl_rejected")


class UnpairedBatcher:
    """Unpaired feedback as batches: each row's completion and its label (desirable or not), the reference
    log-probs, and KTO's KL estimate from mismatched prompt/completion sequences."""

    def __init__(self, encoded: dict[str, list[Sequence]], labels: list[bool], reference: dict[str, torch.Tensor],
                 pad_id: int, device):
        self.encoded, self.reference, self.pad, self.device = encoded, reference, pad_id, device
        self.labels = torch.tensor(labels, dtype=torch.bool)

    def policy_and_reference(self, model, idx: list[int], self_reference: bool):
        """(policy log-probs, reference log-probs, desirable labels, KL estimate) of the rows `idx`."""
        sums, _ = model(**to_device(collate([self.encoded["completion"][i] for i in idx], self.pad), self.device))
        ref = sums.detach() if self_reference else self.reference["completion"][idx].to(self.device)
        with torch.no_grad():
            pm, _ = model(**to_device(collate([self.encoded["mismatched"][i] for i in idx], self.pad), self.device))
            ref_m = pm if self_reference else self.reference["mismatched"][idx].to(self.device)
            kl = (pm - ref_m).mean().clamp(min=0)
        return sums, ref, self.labels[idx].to(self.device), kl


def unpaired_step(batcher: UnpairedBatcher, cfg: dict):
    """KTO's step on unpaired rows: (summed loss, diagnostics summed over the rows). kl_chosen / kl_rejected are
    the mean log-ratios of the desirable / undesirable completions (the pair names, so plots read the same);
    label_accuracy is the share of rows whose implicit reward has the label's sign."""
    def loss(model, idx: list[int]):
        policy, ref, desirable, kl = batcher.policy_and_reference(model, idx, cfg["reference"] == "self")
        losses = kto_unpaired_loss(policy, ref, desirable, kl, cfg["beta"], cfg["kto_desirable_weight"],
                                   cfg["kto_undesirable_weight"])
        ratio, good = (policy - ref).detach(), desirable.float()
        return losses.sum(), {"label_accuracy": ((ratio > 0) == desirable).float().sum(),
                              "kl_chosen": (ratio * good).sum(), "kl_rejected": (ratio * (1 - good)).sum(),
                              "desirable": good.sum(), "undesirable": (1 - good).sum()}
    return loss


def unpaired_objective(run: Run, train: UnpairedBatcher, heldout: UnpairedBatcher, cfg: dict) -> Objective:
    per = {"kl_chosen": "desirable", "kl_rejected": "undesirable"}

    def evaluate(model) -> dict:
        held = unpaired_step(heldout, cfg)

        def sums(idx):
            loss, stats = held(model, idx)
            return {"loss": loss, "weight": len(idx), **stats}
        found = means(run.evaluate_sums(len(heldout.labels), 32, sums), per)
        return {f"heldout_{k}": found[k] for k in UNPAIRED_METRICS}

    return Objective(lengths=[len(s.ids) for s in train.encoded["completion"]], weight=len,
                     loss=unpaired_step(train, cfg), evaluate=evaluate, per=per)


def train_preferences(run: Run, policy, train: PairBatcher, heldout: PairBatcher, n_train: int, n_heldout: int,
                      cfg: dict, seed: int, epoch_live=None, step_live=None):
    """Optimise the trainable parameters of `policy` (a causal LM) on preference pairs. Returns the per-epoch
    metrics and the prepared ResponseLogprobs, whose `.model` is the trained policy."""
    check_config(cfg)
    if not any(p.requires_grad for p in policy.parameters()):
        raise ConfigError("the policy has no trainable parameters (loss would stay at log 2); check dpo.lora")
    if isinstance(train, UnpairedBatcher):
        objective, accuracy = unpaired_objective(run, train, heldout, cfg), "label_accuracy"
    else:
        objective, accuracy = pair_objective(run, train, heldout, n_train, n_heldout, cfg), "pair_accuracy"
    return fit(run, ResponseLogprobs(policy), cfg, objective, seed,
               "dpo", epoch_live=epoch_live, step_live=step_live,
               show=("train_loss", f"train_{accuracy}", "train_kl_chosen", "train_kl_rejected", "heldout_loss",
                     f"heldout_{accuracy}"),
               live_name=lambda k: k.replace("_", "/", 1))  # train/loss, heldout/loss
