"""Training the Bradley-Terry reward model through the one training loop (training.py). Apart from
reward_model.py, so that `evaluate`, which only loads and scores a reward model, does not depend on the loop."""

from __future__ import annotations

from .batching import Encoder
from .reward_model import RewardScorer, pair_scores, pair_sums, reward_model_loss, summarise
from .training import Objective, Run, fit


def train_reward_model(run: Run, model, tokenizer, train: list[dict], heldout: list[dict], cfg: dict,
                       max_length: int, seed: int, live=None):
    """Bradley-Terry training on the pairs. Each epoch ends with accuracy and margin on the training and held-out
    pairs. Returns the last epoch's metrics (with the encoder's truncation counts) and the prepared scorer."""
    encode = Encoder(tokenizer, max_length)
    to_pairs = lambda rows: [(encode(r["prompt"], r["chosen"]), encode(r["prompt"], r["rejected"])) for r in rows]
    train_pairs, heldout_pairs = to_pairs(train), to_pairs(heldout)
    pad = tokenizer.pad_token_id

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

    objective = Objective(lengths=[len(c.ids) + len(r.ids) for c, r in train_pairs], weight=len, loss=loss,
                          evaluate=evaluate)
    history, model = fit(run, RewardScorer(model), cfg, objective, seed, "reward", epoch_live=live,
                         show=("train_loss", "train_accuracy", "heldout_accuracy", "heldout_margin"))
    return {**history[-1], **encode.stats()}, model
