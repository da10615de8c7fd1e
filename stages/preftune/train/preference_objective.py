"""Preference optimisation (DPO and its variants, dpo.loss) on pairs, and KTO on unpaired feedback, against
precomputed reference log-probs.

The reference model never runs during training: its log-probs depend only on the data and the SFT weights, so the
`reference` stage computes them once and every beta, loss or lr reuses them. With a LoRA policy the policy at step
0 *is* the SFT model (LoRA's B matrix starts at zero), so the reference log-probs equal the adapter-disabled
policy's, and no second copy of the weights is needed.

The metric names kl_chosen / kl_rejected are the lab's: the mean log-ratio log pi(y|x) - log pi_ref(y|x) of the
chosen / rejected answers (summed over their tokens), not KL divergences (losses.pair_diagnostics).
"""

from __future__ import annotations

import logging

import torch

from ..data.encoding import collate, to_device
from ..data.formats import is_unpaired
from ..model.logprobs import ResponseLogprobs
from ..model.packing import PackedPairLogprobs, check_packed_equals_padded, pack_pairs, supports_packing
from ..pipeline.errors import ConfigError
from .batches import evaluate_sums
from .loop import Objective
from .losses import UNPAIRED_LOSSES, PairLogps, PreferenceLoss
from .pairs import encode_pairs, reference_for

log = logging.getLogger("dpo")

PAIR_METRICS = ("loss", "pair_accuracy", "kl_chosen", "kl_rejected", "implicit_r_w", "implicit_r_l", "margin")
UNPAIRED_METRICS = ("loss", "label_accuracy", "kl_chosen", "kl_rejected")


def preference_objective(process, encode, train: list[dict], heldout: list[dict], cfg: dict,
                         loss_fn: PreferenceLoss, reference: dict, reference_path: str) -> Objective:
    """The dpo stage's objective for its data: PairObjective on pairs, UnpairedObjective (KTO) on unpaired rows.
    `loss_fn` is dpo.loss with its beta and options; `reference` is the loaded reference file (tensors
    "<split>/<kind>", pairs.reference_key)."""
    if not is_unpaired(train):
        return PairObjective(process, encode, train, heldout, cfg, loss_fn, reference, reference_path)
    if loss_fn.names not in [[loss] for loss in UNPAIRED_LOSSES]:
        raise ConfigError(f"params.yaml: dpo.loss: {cfg['loss']} needs preference pairs, but data.source holds "
                          f"unpaired feedback (prompt, completion, label); use dpo.loss: "
                          f"{' or '.join(sorted(UNPAIRED_LOSSES))}, or a file of pairs")
    return UnpairedObjective(process, encode, train, heldout, cfg, loss_fn, reference, reference_path)


class PairObjective(Objective):
    """A preference loss on pairs: chosen and rejected in one forward, the reference from the cached file."""

    name = "dpo"
    show = ("train_loss", "train_pair_accuracy", "train_kl_chosen", "train_kl_rejected", "heldout_loss",
            "heldout_pair_accuracy")

    def __init__(self, process, encode, train, heldout, cfg, loss_fn: PreferenceLoss, reference, reference_path):
        super().__init__(process, encode, train, heldout, cfg)
        self.loss_fn = loss_fn
        self._use({split: (encode_pairs(encode, rows), reference_for(reference, split, rows, reference_path))
                   for split, rows in (("train", train), ("heldout", heldout))})

    @classmethod
    def on_sequences(cls, process, pairs: dict, reference: dict, cfg: dict, loss_fn: PreferenceLoss,
                     pad: int) -> "PairObjective":
        """The same objective on already-encoded training sequences ({kind: [Sequence]}) and their reference
        log-probs ({kind: tensor}), with no held-out set: what the benchmarks time at exact lengths."""
        objective = cls.__new__(cls)
        objective.process, objective.cfg, objective.loss_fn, objective.pad = process, cfg, loss_fn, pad
        objective._use({"train": (pairs, reference)})
        return objective

    def _use(self, splits: dict) -> None:
        self.splits = splits
        seqs = splits["train"][0]
        self.lengths = [len(c.ids) + len(r.ids) for c, r in zip(seqs["chosen"], seqs["rejected"])]

    packed = False
    packing_checked = False

    def wrap(self, model):
        """The module whose forward gives summed response log-probs and token counts per sequence: on packed
        pair batches where dpo.padding_free allows and the model supports them (packing.py), else padded."""
        if self.cfg["padding_free"]:
            why_not = supports_packing(model)
            if why_not is None:
                self.packed = True
                return PackedPairLogprobs(model)
            log.info("dpo.padding_free: padded batches instead, because %s", why_not)
        return ResponseLogprobs(model)

    def loss(self, model, idx, split="train"):
        """The DPO step on pairs `idx`: chosen and rejected in one forward, the reference log-probs from the cached
        file, the loss, the diagnostics. Returns the summed loss and the statistics summed over the pairs."""
        (seqs, ref), device, b = self.splits[split], self.process.device, len(idx)
        chosen, rejected = [seqs["chosen"][i] for i in idx], [seqs["rejected"][i] for i in idx]
        sums, tokens = self.forward(model, chosen, rejected)  # (2B,): the chosen answers, then the rejected
        if self.cfg["reference"] == "self":  # the lab's exercise: the policy is its own (moving) reference
            ref_chosen, ref_rejected = sums[:b].detach(), sums[b:].detach()
        else:
            ref_chosen, ref_rejected = ref["chosen"][idx].to(device), ref["rejected"][idx].to(device)
        kl = kl_estimate(model, seqs, ref, idx, self) if self.loss_fn.needs_kl_estimate else None
        logps = PairLogps(sums[:b], sums[b:], ref_chosen, ref_rejected, tokens[:b], tokens[b:], kl)
        losses, terms = self.loss_fn(logps)
        stats = self.loss_fn.diagnostics(logps)  # batch means: summed over the pairs, as `fit` adds them up
        # a mixture logs each term (loss_sigmoid, loss_sft), unweighted, beside the weighted sum
        each = {f"loss_{name}": value.detach().sum() for name, value in terms.items()} if len(terms) > 1 else {}
        return losses.sum(), {**{k: stats[k] * b for k in PAIR_METRICS if k != "loss"}, **each}

    def forward(self, model, chosen: list, rejected: list):
        """Summed response log-probs and token counts of chosen + rejected, in one forward: packed pairs (checked
        against padded ones on the first batch) or one padded batch."""
        if self.packed and not self.packing_checked:
            check_packed_equals_padded(model, chosen[:2], rejected[:2], self.pad, self.process.device,
                                       self.cfg["precision"])
            self.packing_checked = True
        batch = pack_pairs(chosen, rejected) if self.packed else collate(chosen + rejected, self.pad)
        return model(**to_device(batch, self.process.device))

    def evaluate(self, model):
        """Loss and diagnostics on the held-out pairs, pair-weighted means."""
        def sums(idx):
            loss, stats = self.loss(model, idx, "heldout")
            return {"loss": loss, "pairs": len(idx), **stats}
        totals = evaluate_sums(self.process, len(self.splits["heldout"][1]["chosen"]), sums)
        return {f"heldout_{k}": v / totals["pairs"] for k, v in totals.items() if k != "pairs"}


@torch.no_grad()
def kl_estimate(model, seqs, ref, idx, objective: Objective) -> torch.Tensor:
    """KTO's reference point z: the batch's mean log-ratio on mismatched sequences (row i's prompt with row i+1's
    good answer, pairs.encode_pairs), clamped at 0, without a gradient."""
    mismatched = collate([seqs["mismatched"][i] for i in idx], objective.pad)
    policy, _ = model(**to_device(mismatched, objective.process.device))
    reference = policy if objective.cfg["reference"] == "self" else ref["mismatched"][idx].to(objective.process.device)
    return (policy - reference).mean().clamp(min=0)


class UnpairedObjective(Objective):
    """KTO on unpaired rows (prompt, completion, desirable or not). kl_chosen / kl_rejected are the mean
    log-ratios of the desirable / undesirable completions (the pair names, so plots read the same);
    label_accuracy is the share of rows whose implicit reward has the label's sign."""

    name = "dpo"
    show = ("train_loss", "train_label_accuracy", "train_kl_chosen", "train_kl_rejected", "heldout_loss",
            "heldout_label_accuracy")
    per = {"kl_chosen": "desirable", "kl_rejected": "undesirable"}

    def __init__(self, process, encode, train, heldout, cfg, loss_fn: PreferenceLoss, reference, reference_path):
        super().__init__(process, encode, train, heldout, cfg)
        self.loss_fn = loss_fn
        self.splits = {split: (encode_pairs(encode, rows), reference_for(reference, split, rows, reference_path),
                               torch.tensor([r["label"] for r in rows], dtype=torch.bool))
                       for split, rows in (("train", train), ("heldout", heldout))}
        self.lengths = [len(s.ids) for s in self.splits["train"][0]["completion"]]

    def wrap(self, model):
        return ResponseLogprobs(model)

    def loss(self, model, idx, split="train"):
        (seqs, ref, labels), cfg, device = self.splits[split], self.cfg, self.process.device
        policy, _ = model(**to_device(collate([seqs["completion"][i] for i in idx], self.pad), device))
        reference = policy.detach() if cfg["reference"] == "self" else ref["completion"][idx].to(device)
        desirable = labels[idx].to(device)
        kl = kl_estimate(model, seqs, ref, idx, self)
        losses = self.loss_fn.unpaired(policy, reference, desirable, kl)
        ratio, good = (policy - reference).detach(), desirable.float()
        return losses.sum(), {"label_accuracy": ((ratio > 0) == desirable).float().sum(),
                              "kl_chosen": (ratio * good).sum(), "kl_rejected": (ratio * (1 - good)).sum(),
                              "desirable": good.sum(), "undesirable": (1 - good).sum()}

    def evaluate(self, model):
        def sums(idx):
            loss, stats = self.loss(model, idx, "heldout")
            return {"loss": loss, "weight": len(idx), **stats}
        found = self.means(evaluate_sums(self.process, len(self.splits["heldout"][2]), sums))
        return {f"heldout_{k}": found[k] for k in UNPAIRED_METRICS}
