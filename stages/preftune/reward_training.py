"""Training the Bradley-Terry reward model through the one training loop (training.py). Apart from
reward_model.py, so that `evaluate`, which only loads and scores a reward model, does not depend on the loop."""

from __future__ import annotations

import torch

from .batching import Encoder
from .formats import is_unpaired
from .reward_model import (RewardScorer, label_sums, pair_scores, pair_sums, pointwise_loss, reward_model_loss, score,
                           summarise, summarise_labels)
from .training import Objective, Run, fit


def train_reward_model(run: Run, model, tokenizer, train: list[dict], heldout: list[dict], cfg: dict,
                       max_length: int, seed: int, live=None):
    """Bradley-Terry training on pairs, or on unpaired feedback a pointwise judge (pointwise_loss). Each epoch
    ends with accuracy and margin on the training and held-out rows. Returns the last epoch's metrics (with the
    encoder's truncation counts) and the prepared scorer."""
    encode = Encoder(tokenizer, max_length)
    objective = (_pointwise if is_unpaired(train) else _bradley_terry)(run, encode, train, heldout, cfg)
    history, model = fit(run, RewardScorer(model), cfg, objective, seed, "reward", epoch_live=live,
                         show=("train_loss", "train_accuracy", "heldout_accuracy", "heldout_margin"))
    return {**history[-1], **encode.stats()}, model


def _bradley_terry(run: Run, encode: Encoder, train: list[dict], heldout: list[dict], cfg: dict) -> Objective:
    to_pairs = lambda rows: [(encode.row(r, "chosen"), encode.row(r, "rejected")) for r in rows]
    train_pairs, heldout_pairs = to_pairs(train), to_pairs(heldout)
    pad = encode.tokenizer.pad_token_id

    def loss(model, idx):
        r_w, r_l = pair_scores(model, [train_pairs[i] for i in idx], pad, run.device)
        return reward_model_loss(r_w, r_l, cfg["center_coef"]).sum(), {}

    def evaluate(model) -> dict:
        out = {}
        for split, pairs in (("train", train_pairs), ("heldout", heldout_pairs)):
            stats = summarise(run.evaluate_sums(len(pairs), 32, lambda idx: pair_sums(
                model, [pairs[i] for i in idx], pad, run.device)))
            out.update({f"{split}_accuracy": stats["accuracy"], f"{split}_margin": stats["margin"]})
        out.update({"reward_mean": stats["reward_mean"], "reward_std": stats["reward_std"]})  # held-out
        return out

    return Objective(lengths=[len(c.ids) + len(r.ids) for c, r in train_pairs], weight=len, loss=loss,
                     evaluate=evaluate)


def _pointwise(run: Run, encode: Encoder, train: list[dict], heldout: list[dict], cfg: dict) -> Objective:
    seqs = {"train": [encode.row(r, "completion") for r in train], "heldout": [encode.row(r, "completion") for r in heldout]}
    labels = {"train": torch.tensor([r["label"] for r in train]), "heldout": torch.tensor([r["label"] for r in heldout])}
    pad = encode.tokenizer.pad_token_id

    def loss(model, idx):
        rewards = score(model, [seqs["train"][i] for i in idx], pad, run.device)
        return pointwise_loss(rewards, labels["train"][idx].to(rewards.device)).sum(), {}

    def evaluate(model) -> dict:
        out = {}
        for split in ("train", "heldout"):
            stats = summarise_labels(run.evaluate_sums(len(seqs[split]), 32, lambda idx: label_sums(
                model, [seqs[split][i] for i in idx], labels[split][idx], pad, run.device)))
            out.update({f"{split}_accuracy": stats["accuracy"], f"{split}_margin": stats["margin"]})
        out.update({"reward_mean": stats["reward_mean"], "reward_std": stats["reward_std"]})  # held-out
        return out

    return Objective(lengths=[len(s.ids) for s in seqs["train"]], weight=len, loss=loss, evaluate=evaluate)
