"""Preference losses as pure tensor functions: no model, no trainer, just log-probabilities in, losses out.

Every loss returns PER-EXAMPLE losses of shape (B,); the caller takes the mean. Inputs are 1-D float tensors of
response log-probabilities (prompt tokens masked out). Notation:

    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)

"Summed" means log-probs summed over the response tokens; "averaged" means that sum divided by the number of
response tokens. Which one each loss expects is stated in its docstring. `PreferenceLoss` is dpo.loss with its beta
and options, built once from params.yaml: it hands each loss the right log-probs from a `PairLogps`.

The functions trust their arguments: every range (beta >= 0, label_smoothing < 0.5, ...) is checked once, in
schema.py, when a stage starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F


def _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected) -> torch.Tensor:
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def sigmoid_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023): -logsigmoid(beta * h). Summed log-probs."""
    h = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return -F.logsigmoid(beta * h)


def cdpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float,
              label_smoothing: float) -> torch.Tensor:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): the labels are flipped with
    probability e, so the loss is the expected DPO loss under smoothed labels:

        -(1 - e) logsigmoid(beta h) - e logsigmoid(-beta h)

    Summed log-probs. e = 0 is DPO. This is TRL's `loss_type="sigmoid"` with `label_smoothing=e`.
    """
    z = beta * _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def robust_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float,
                label_smoothing: float) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024, "Provably robust DPO"): the unbiased loss under label-flip rate e,

        [-(1 - e) logsigmoid(beta h) + e logsigmoid(-beta h)] / (1 - 2e)

    Summed log-probs. e = 0 is DPO; e must be < 0.5 (the correction divides by 1 - 2e). Unlike cdpo this loss is
    not bounded below for e > 0 (it rewards pushing h ever further), so keep e small.
    """
    assert 0.0 <= label_smoothing < 0.5, label_smoothing  # the correction divides by 1 - 2e
    z = beta * _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    e = label_smoothing
    return (-(1.0 - e) * F.logsigmoid(z) + e * F.logsigmoid(-z)) / (1.0 - 2.0 * e)


def hinge_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> torch.Tensor:
    """SLiC hinge (Zhao et al. 2023), with the reference as in TRL's `hinge`: relu(1 - beta h). Summed log-probs."""
    h = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return torch.relu(1.0 - beta * h)


def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023): (h - 1/(2 beta))^2.

    The caller passes per-token AVERAGED log-probs (policy and reference alike), as IPO's authors do: with sums the
    target margin 1/(2 beta) would scale with the response length. beta must be > 0.
    """
    assert beta > 0, beta  # the target margin is 1 / (2 beta)
    h = _margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return (h - 1.0 / (2.0 * beta)) ** 2


def simpo_loss(policy_chosen_avg, policy_rejected_avg, beta: float, gamma: float) -> torch.Tensor:
    """SimPO (Meng et al. 2024): -logsigmoid(beta (avg_w - avg_l) - gamma). Per-token AVERAGED policy log-probs,
    no reference model; gamma is the target reward margin."""
    return -F.logsigmoid(beta * (policy_chosen_avg - policy_rejected_avg) - gamma)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012): log(-expm1(x)) near 0, log1p(-exp(x))
    far from 0."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _log_odds(logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) from log p. log p is clamped just below 0 so that p == 1 gives a large finite value
    instead of inf/NaN."""
    eps = 1e-6 if logp.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-12
    logp = logp.clamp(max=-eps)
    return logp - _log1mexp(logp)


def orpo_loss(policy_chosen_avg, policy_rejected_avg, lam: float) -> torch.Tensor:
    """ORPO (Hong et al. 2024): NLL(chosen) - lam * logsigmoid(log_odds_w - log_odds_l).

    Per-token AVERAGED policy log-probs, no reference model. NLL(chosen) = -policy_chosen_avg (the SFT term);
    log_odds(p) = log p - log(1 - p), computed stably from log p. TRL's `beta` for ORPO is this `lam`.
    """
    ratio = _log_odds(policy_chosen_avg) - _log_odds(policy_rejected_avg)
    return -policy_chosen_avg - lam * F.logsigmoid(ratio)


def kto_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, kl_estimate, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024) on pairs: each pair gives one desirable (chosen) and one undesirable (rejected)
    example, each scored by kto_unpaired_loss. Returns (desirable + undesirable) / 2 per pair, so the mean over
    the B pairs equals the mean over the 2B examples (as TRL averages the concatenated desirable and undesirable
    losses when they are balanced).
    """
    desirable = kto_unpaired_loss(policy_chosen, ref_chosen, torch.ones_like(policy_chosen, dtype=torch.bool),
                                  kl_estimate, beta, desirable_weight, undesirable_weight)
    undesirable = kto_unpaired_loss(policy_rejected, ref_rejected, torch.zeros_like(policy_rejected, dtype=torch.bool),
                                    kl_estimate, beta, desirable_weight, undesirable_weight)
    return (desirable + undesirable) / 2.0


def kto_unpaired_loss(policy, ref, desirable, kl_estimate, beta: float, desirable_weight: float = 1.0,
                      undesirable_weight: float = 1.0) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024) on unpaired feedback, per example (B,). Summed log-probs; r = policy - ref;
    `desirable` is a (B,) bool label; z = kl_estimate.detach().clamp(min=0), a scalar the caller estimates from
    mismatched prompt/response pairs (no gradient flows through it):

        desirable:   w_D * (1 - sigmoid(beta (r - z)))
        undesirable: w_U * (1 - sigmoid(beta (z - r)))

    The weights are TRL's desirable_weight / undesirable_weight: with unequal counts, choose them so that
    w_D * n_D / (w_U * n_U) lies in [1, 4/3], as the KTO paper recommends.
    """
    z = torch.as_tensor(kl_estimate, dtype=policy.dtype, device=policy.device).detach().clamp(min=0)
    r = policy - ref
    return torch.where(desirable, desirable_weight * (1.0 - torch.sigmoid(beta * (r - z))),
                       undesirable_weight * (1.0 - torch.sigmoid(beta * (z - r))))


def sft_loss(policy_chosen_avg: torch.Tensor) -> torch.Tensor:
    """The chosen answer's negative log-likelihood per token (averaged log-probs): the term RPO adds to DPO (Pang et
    al. 2024; TRL's loss_type "sft"), which keeps the chosen answer's likelihood from falling while the margin grows.
    A mixture term only (dpo.loss: [sigmoid, sft]): alone it ignores the rejected answer."""
    return -policy_chosen_avg


# --- dispatcher ------------------------------------------------------------------------------------------------

@dataclass
class PairLogps:
    """Log-probs of a batch of preference pairs. policy_* and ref_* are SUMMED over response tokens, shape (B,);
    ref_* are None for reference-free losses. *_tokens are the response token counts, (B,) float.
    kl_estimate is a scalar tensor, needed by kto only."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor | None
    ref_rejected: torch.Tensor | None
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    kl_estimate: torch.Tensor | None = None

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen is not None and self.ref_rejected is not None

    def averaged(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(policy_chosen, policy_rejected, ref_chosen, ref_rejected) divided by the response token counts."""
        wt, lt = self.chosen_tokens.clamp(min=1), self.rejected_tokens.clamp(min=1)
        rc = self.ref_chosen / wt if self.ref_chosen is not None else None
        rr = self.ref_rejected / lt if self.ref_rejected is not None else None
        return self.policy_chosen / wt, self.policy_rejected / lt, rc, rr


REFERENCE_FREE = {"simpo", "orpo", "sft"}
NEEDS_KL_ESTIMATE = {"kto"}
UNPAIRED_LOSSES = {"kto"}  # the losses that also train on unpaired feedback (prompt, completion, label)


@dataclass(frozen=True)
class PreferenceLoss:
    """dpo.loss with everything it reads, built once from the params section (`from_params`): its terms (name,
    weight), beta and the loss options. Called on a batch's PairLogps it gives the per-pair losses (B,) and each
    term's per-pair values; `term` dispatches one name (schema.LOSS_NAMES lists them) to its pure function above.
    ipo (policy and reference), simpo and orpo get per-token averaged log-probs, the others summed ones; orpo ignores
    beta (its weight is orpo_lambda)."""

    terms: tuple[tuple[str, float], ...]
    beta: float
    label_smoothing: float
    simpo_gamma: float
    orpo_lambda: float
    kto_desirable_weight: float
    kto_undesirable_weight: float

    @classmethod
    def from_params(cls, dpo: Mapping) -> "PreferenceLoss":
        """From the dpo section (or an online round's): dpo.loss is one name (weight 1), or a list weighted by
        dpo.loss_weights (TRL's loss_type list and loss_weights; null weights: 1 each)."""
        names = [dpo["loss"]] if isinstance(dpo["loss"], str) else list(dpo["loss"])
        weights = dpo.get("loss_weights") or [1.0] * len(names)
        return cls(tuple(zip(names, weights, strict=True)),  # schema.py checks the counts; a mismatch is a bug
                   dpo["beta"], dpo["label_smoothing"], dpo["simpo_gamma"], dpo["orpo_lambda"],
                   dpo["kto_desirable_weight"], dpo["kto_undesirable_weight"])

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.terms]

    @property
    def needs_kl_estimate(self) -> bool:
        return any(name in NEEDS_KL_ESTIMATE for name in self.names)

    def __call__(self, logps: PairLogps) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-pair losses (B,), sum_i w_i * loss_i over the terms, and each term's per-pair values. A single loss
        is that loss, unweighted: the same tensor as `term` gives."""
        values = {name: self.term(name, logps) for name in self.names}
        if len(self.terms) == 1:
            return values[self.names[0]], values
        return sum(weight * values[name] for name, weight in self.terms), values

    def term(self, name: str, logps: PairLogps) -> torch.Tensor:
        """Per-pair losses (B,) of the one loss `name`."""
        assert name in REFERENCE_FREE or logps.has_reference, f"{name} needs reference log-probs"
        summed, beta = (logps.policy_chosen, logps.policy_rejected, logps.ref_chosen, logps.ref_rejected), self.beta
        if name == "sigmoid":
            return sigmoid_loss(*summed, beta)
        if name == "cdpo":
            return cdpo_loss(*summed, beta, self.label_smoothing)
        if name == "robust":
            return robust_loss(*summed, beta, self.label_smoothing)
        if name == "hinge":
            return hinge_loss(*summed, beta)
        if name == "ipo":
            return ipo_loss(*logps.averaged(), beta)
        if name == "simpo":
            return simpo_loss(*logps.averaged()[:2], beta, self.simpo_gamma)
        if name == "orpo":
            return orpo_loss(*logps.averaged()[:2], self.orpo_lambda)
        if name == "sft":
            return sft_loss(logps.averaged()[0])
        if name == "kto":
            assert logps.kl_estimate is not None, "kto needs logps.kl_estimate (from mismatched prompt/response pairs)"
            return kto_loss(*summed, logps.kl_estimate, beta, self.kto_desirable_weight, self.kto_undesirable_weight)
        raise ValueError(f"unknown loss {name!r}")

    def unpaired(self, policy, ref, desirable, kl_estimate) -> torch.Tensor:
        """KTO on unpaired feedback (kto_unpaired_loss) at this loss's beta and weights."""
        return kto_unpaired_loss(policy, ref, desirable, kl_estimate, self.beta, self.kto_desirable_weight,
                                 self.kto_undesirable_weight)

    def diagnostics(self, logps: PairLogps) -> dict[str, float]:
        return pair_diagnostics(logps, self.beta)


@torch.no_grad()
def pair_diagnostics(logps: PairLogps, beta: float) -> dict[str, float]:
    """Batch means under the lab's names: kl_chosen and kl_rejected (the mean log-ratios policy - reference of the
    chosen and rejected answers, summed over their tokens: not KL divergences, whatever the names say),
    implicit_r_w and implicit_r_l (beta times those), margin (their difference) and pair_accuracy (margin > 0,
    strictly). Without a reference (simpo, orpo) the rewards are beta * the length-averaged policy log-probs, as
    those losses (and TRL's CPO/ORPO trainers) use, and kl_* are omitted. TRL logs the same quantities as
    rewards/chosen, rewards/rejected, rewards/margins and rewards/accuracies."""
    if logps.has_reference:
        d_w = logps.policy_chosen - logps.ref_chosen
        d_l = logps.policy_rejected - logps.ref_rejected
    else:
        d_w, d_l = logps.averaged()[:2]
    r_w, r_l = beta * d_w, beta * d_l
    out = {}
    if logps.has_reference:
        out["kl_chosen"] = d_w.mean().item()
        out["kl_rejected"] = d_l.mean().item()
    out["implicit_r_w"] = r_w.mean().item()
    out["implicit_r_l"] = r_l.mean().item()
    out["margin"] = (r_w - r_l).mean().item()
    # The lab's definition, beta * h > 0 strictly: at beta = 0 (or policy == reference) accuracy is 0, not 0.5.
    out["pair_accuracy"] = ((r_w - r_l) > 0).float().mean().item()
    return out
