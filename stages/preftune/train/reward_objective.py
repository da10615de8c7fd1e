"""Training the reward model through the one training loop (loop.py): Bradley-Terry on pairs, a pointwise
judge on unpaired feedback. Apart from reward_model.py so that `evaluate`, which only loads and scores a reward
model, does not import the loop (an edit to loop.py then reruns the training stages, not evaluate)."""

from __future__ import annotations

import torch

from ..data.formats import is_unpaired
from ..model.reward_model import (RewardScorer, label_sums, pair_scores, pair_sums, pointwise_loss, reward_model_loss,
                                  score, summarise, summarise_labels)
from .batches import evaluate_sums
from .loop import Objective

SHOW = ("train_loss", "train_accuracy", "heldout_accuracy", "heldout_margin")


def reward_objective(process, encode, train: list[dict], heldout: list[dict], cfg: dict) -> Objective:
    """The reward stage's objective for its data: pairs or unpaired feedback."""
    return (PointwiseObjective if is_unpaired(train) else BradleyTerryObjective)(process, encode, train, heldout, cfg)


class BradleyTerryObjective(Objective):
    """-logsigmoid(r_chosen - r_rejected) (+ centring, reward_model_loss) on pairs; each epoch ends with accuracy
    and margin on the training and held-out pairs, and the held-out rewards' mean and spread."""

    name, show = "reward", SHOW

    def __init__(self, process, encode, train, heldout, cfg):
        super().__init__(process, encode, train, heldout, cfg)
        self.pairs = {split: [(encode.row(r, "chosen"), encode.row(r, "rejected")) for r in rows]
                      for split, rows in (("train", train), ("heldout", heldout))}
        self.lengths = [len(c.ids) + len(r.ids) for c, r in self.pairs["train"]]

    @classmethod
    def on_sequences(cls, process, pairs: list, cfg: dict, pad: int) -> "BradleyTerryObjective":
        """The same objective on already-encoded (chosen, rejected) Sequence pairs, with no held-out set: what the
        benchmarks time at exact lengths."""
        objective = cls.__new__(cls)
        objective.process, objective.cfg, objective.pad = process, cfg, pad
        objective.pairs = {"train": pairs}
        objective.lengths = [len(c.ids) + len(r.ids) for c, r in pairs]
        return objective

    def wrap(self, model):
        return RewardScorer(model)

    def loss(self, model, idx):
        r_w, r_l = pair_scores(model, [self.pairs["train"][i] for i in idx], self.pad, self.process.device)
        return reward_model_loss(r_w, r_l, self.cfg["center_coef"]).sum(), {}

    def evaluate(self, model):
        out = {}
        for split, pairs in self.pairs.items():
            stats = summarise(evaluate_sums(self.process, len(pairs), lambda idx: pair_sums(
                model, [pairs[i] for i in idx], self.pad, self.process.device)))
            out.update({f"{split}_accuracy": stats["accuracy"], f"{split}_margin": stats["margin"]})
        out.update({"heldout_reward_mean": stats["reward_mean"], "heldout_reward_std": stats["reward_std"]})
        return out


class PointwiseObjective(Objective):
    """Unpaired feedback: a logistic regression of the label on the reward (pointwise_loss); accuracy is the share
    of rows whose reward has the label's sign."""

    name, show = "reward", SHOW

    def __init__(self, process, encode, train, heldout, cfg):
        super().__init__(process, encode, train, heldout, cfg)
        splits = (("train", train), ("heldout", heldout))
        self.seqs = {split: [encode.row(r, "completion") for r in rows] for split, rows in splits}
        self.labels = {split: torch.tensor([r["label"] for r in rows]) for split, rows in splits}
        self.lengths = [len(s.ids) for s in self.seqs["train"]]

    def wrap(self, model):
        return RewardScorer(model)

    def loss(self, model, idx):
        rewards = score(model, [self.seqs["train"][i] for i in idx], self.pad, self.process.device)
        return pointwise_loss(rewards, self.labels["train"][idx].to(rewards.device)).sum(), {}

    def evaluate(self, model):
        out = {}
        for split, seqs in self.seqs.items():
            stats = summarise_labels(evaluate_sums(self.process, len(seqs), lambda idx: label_sums(
                model, [seqs[i] for i in idx], self.labels[split][idx], self.pad, self.process.device)))
            out.update({f"{split}_accuracy": stats["accuracy"], f"{split}_margin": stats["margin"]})
        out.update({"heldout_reward_mean": stats["reward_mean"], "heldout_reward_std": stats["reward_std"]})
        return out
