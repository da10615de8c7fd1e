"""Bradley-Terry reward model: the SFT backbone with a scalar head, trained on preference pairs.

Sequences are right-padded and end in EOS. The scalar head reads the hidden state at the last real
token, found from the attention mask's lengths (not from pad ids, which may equal EOS in a pretrained
tokenizer), so scores do not depend on how much padding a batch has.
"""

from __future__ import annotations

import logging
import random

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .batching import Encoder, batch_order, collate
from .gold import is_correct
from .training import adamw, log_metrics, to_device, warmup_cosine

log = logging.getLogger(__name__)


def reward_model_loss(r_chosen, r_rejected, center_coef: float = 0.0) -> torch.Tensor:
    """Bradley-Terry reward-model loss per pair: -logsigmoid(r_w - r_l) + c (r_w + r_l)^2.

    The optional term (c = 0.01 is the usual value, TRL's `center_rewards_coefficient`) keeps the rewards centred
    at zero; it is the pair's share of c * mean((r_w + r_l)^2).
    """
    loss = -F.logsigmoid(r_chosen - r_rejected)
    if center_coef:
        loss = loss + center_coef * (r_chosen + r_rejected) ** 2
    return loss


def load_reward_model(path: str, trust_remote_code: bool = False):
    from transformers import AutoModelForSequenceClassification

    from .modeling import load_error

    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, trust_remote_code=trust_remote_code, dtype=torch.float32)
    except Exception as err:  # missing files, a truncated or foreign file: the libraries raise many types
        raise load_error("reward model", path, err) from None
    if not isinstance(getattr(model, "score", None), torch.nn.Module) or model.base_model is model:
        raise ValueError(f"{path}: {type(model).__name__} has no backbone + `score` head; "
                         "use a causal LM whose sequence-classification class follows that layout")
    return model


def score(model, sequences, pad_id: int, device) -> torch.Tensor:
    """Rewards (B,) for encoded sequences, in one forward: the head at each sequence's last real token."""
    batch = to_device(collate(sequences, pad_id), device)
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    last = batch["attention_mask"].sum(-1) - 1
    return model.score(hidden[torch.arange(len(sequences), device=hidden.device), last]).squeeze(-1).float()


@torch.no_grad()
def score_texts(model, encode: Encoder, prompts: list[str], responses: list[str], device, batch_size: int = 64) -> list[float]:
    model.eval()
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        seqs = [encode(p, r) for p, r in zip(prompts[start:start + batch_size], responses[start:start + batch_size])]
        out += score(model, seqs, encode.tokenizer.pad_token_id, device).tolist()
    return out


def pair_scores(model, pairs, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected in one forward: the first half of the batch is chosen, the second rejected."""
    rewards = score(model, [p[0] for p in pairs] + [p[1] for p in pairs], pad_id, device)
    return rewards[: len(pairs)], rewards[len(pairs):]


@torch.no_grad()
def evaluate_pairs(model, pairs, pad_id: int, device, batch_size: int = 32) -> dict:
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        c, r = pair_scores(model, pairs[start:start + batch_size], pad_id, device)
        chosen.append(c)
        rejected.append(r)
    c, r = torch.cat(chosen), torch.cat(rejected)
    both = torch.cat([c, r])
    return {"accuracy": (c > r).float().mean().item(), "margin": (c - r).mean().item(),
            "reward_mean": both.mean().item(), "reward_std": both.std().item()}


def train_reward_model(model, tokenizer, train: list[dict], heldout: list[dict], cfg: dict, max_length: int,
                       seed: int, device, live=None) -> dict:
    encode = Encoder(tokenizer, max_length)
    to_pairs = lambda rows: [(encode(r["prompt"], r["chosen"]), encode(r["prompt"], r["rejected"])) for r in rows]
    train_pairs, heldout_pairs = to_pairs(train), to_pairs(heldout)
    pad = tokenizer.pad_token_id
    steps = -(-len(train_pairs) // cfg["batch_size"]) * cfg["epochs"]
    optimizer = adamw(model.parameters(), cfg["lr"], cfg["weight_decay"])
    scheduler = warmup_cosine(optimizer, steps, cfg["warmup_steps"])
    metrics: dict = {}
    for epoch in range(1, cfg["epochs"] + 1):
        model.train()
        losses = []
        lengths = [len(c.ids) + len(r.ids) for c, r in train_pairs]
        for idx in tqdm(batch_order(lengths, cfg["batch_size"], seed + epoch), desc=f"reward epoch {epoch}", leave=False):
            r_w, r_l = pair_scores(model, [train_pairs[i] for i in idx], pad, device)
            loss = reward_model_loss(r_w, r_l, cfg["center_coef"]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        train_eval = evaluate_pairs(model, train_pairs, pad, device)
        heldout_eval = evaluate_pairs(model, heldout_pairs, pad, device)
        metrics = {"train_loss": sum(losses) / len(losses),
                   "train_accuracy": train_eval["accuracy"], "train_margin": train_eval["margin"],
                   "heldout_accuracy": heldout_eval["accuracy"], "heldout_margin": heldout_eval["margin"],
                   "reward_mean": heldout_eval["reward_mean"], "reward_std": heldout_eval["reward_std"]}
        log.info("epoch %d: " + " ".join(f"{k} %.4f" for k in metrics), epoch, *metrics.values())
        if live is not None:
            log_metrics(live, metrics)
            live.next_step()
    return {**metrics, **encode.stats()}


def gold_agreement(model, tokenizer, policy, gold: list[dict], max_length: int, n_prompts: int, samples: int,
                   seed: int, device) -> dict:
    """Does the reward model prefer gold-correct answers among answers it never saw?

    For `n_prompts` gold prompts, sample `samples` answers from the policy (the SFT model, whose
    outputs the judge will score later) at temperature 1. Every pair of distinct answers to one prompt
    where exactly one is gold-correct is a test: agreement is the share where the correct one scores higher.
    """
    from .generation import generate_answers

    records = random.Random(seed).sample(gold, min(n_prompts, len(gold)))
    prompts = [r["prompt"] for r in records for _ in range(samples)]
    answers = generate_answers(policy, tokenizer, prompts, sample=True, seed=seed, desc="judge test answers",
                               max_length=max_length)
    encode = Encoder(tokenizer, max_length)
    rewards = score_texts(model, encode, prompts, answers, device)
    agree = total = 0
    for k, record in enumerate(records):
        group = {}
        for j in range(k * samples, (k + 1) * samples):
            group[answers[j]] = rewards[j]  # identical answers get identical scores: keep one
        good = [s for a, s in group.items() if is_correct(record, a)]
        bad = [s for a, s in group.items() if not is_correct(record, a)]
        for g in good:
            for b in bad:
                total += 1
                agree += g > b
    return {"gold_agreement": agree / total if total else None, "gold_agreement_pairs": total}
