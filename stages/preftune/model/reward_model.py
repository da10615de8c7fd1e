"""Bradley-Terry reward model: the SFT backbone with a scalar head, trained on preference pairs.

Sequences are right-padded and end in EOS. The scalar head reads the hidden state at the last real
token, found from the attention mask's lengths (not from pad ids, which may equal EOS in a pretrained
tokenizer), so scores do not depend on how much padding a batch has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.encoding import EVAL_BATCH, Encoder, collate, length_batches, to_device
from ..pipeline.progress import track
from .loading import load_error, resolve_base


def reward_model_loss(r_chosen, r_rejected, center_coef: float = 0.0) -> torch.Tensor:
    """Bradley-Terry reward-model loss per pair: -logsigmoid(r_w - r_l) + c (r_w + r_l)^2.

    The optional term (c = 0.01 is the usual value, TRL's `center_rewards_coefficient`) keeps the rewards centred
    at zero; it is the pair's share of c * mean((r_w + r_l)^2).
    """
    loss = -F.logsigmoid(r_chosen - r_rejected)
    if center_coef:
        loss = loss + center_coef * (r_chosen + r_rejected) ** 2
    return loss


def pointwise_loss(rewards, desirable) -> torch.Tensor:
    """The judge of unpaired feedback, per row: logistic regression of the label on the reward,
    -logsigmoid(r) for a desirable answer and -logsigmoid(-r) for an undesirable one. A reward above 0 then means
    "more likely good than bad", the scale Bradley-Terry rewards have when a pair's two answers are compared."""
    return -F.logsigmoid(torch.where(desirable, rewards, -rewards))


def load_reward_model(path: str, trust_remote_code: bool = False, key: str = "model.base"):
    """A reward model: the model in `path` (a folder, a GGUF file, a package file or a hub id, named by the params
    key `key`) with a one-score sequence-classification head."""
    from transformers import AutoModelForSequenceClassification

    folder, gguf_file = resolve_base(path, key)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, gguf_file=gguf_file, num_labels=1, trust_remote_code=trust_remote_code, dtype=torch.float32)
    except Exception as err:  # missing files, a truncated or foreign file: the libraries raise many types
        raise load_error("reward model", path, err, key) from None
    if not isinstance(getattr(model, "score", None), torch.nn.Module) or model.base_model is model:
        raise ValueError(f"{path}: {type(model).__name__} has no backbone + `score` head; "
                         "use a causal LM whose sequence-classification class follows that layout")
    return model


def last_token_rewards(model, input_ids, attention_mask) -> torch.Tensor:
    """Rewards (B,): the scalar head at each sequence's last real token (right padding, lengths from the mask)."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = attention_mask.sum(-1) - 1
    return model.score(hidden[torch.arange(len(input_ids), device=hidden.device), last]).squeeze(-1).float()


class RewardScorer(torch.nn.Module):
    """The reward model as a module whose forward returns rewards: what training hands to accelerate, so the
    backbone and the head both run inside the wrapped forward (DDP, FSDP)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self._no_split_modules = getattr(model, "_no_split_modules", None)  # FSDP shards the LM layer by layer

    def forward(self, input_ids, attention_mask, response_mask=None):
        return last_token_rewards(self.model, input_ids, attention_mask)


def score(model, sequences, pad_id: int, device) -> torch.Tensor:
    """Rewards (B,) for encoded sequences, in one forward. `model` is a reward model (it has a `score` head), or a
    RewardScorer, as training prepared it or not."""
    batch = to_device(collate(sequences, pad_id), device)
    scorer = RewardScorer(model) if hasattr(model, "score") else model
    return scorer(batch["input_ids"], batch["attention_mask"])


@torch.no_grad()
def score_texts(model, encode: Encoder, prompts: list[str], responses: list[str], device, batch_size: int = EVAL_BATCH,
                desc: str = "score answers", finished: list[bool] | None = None) -> list[float]:
    """Rewards of prompt + response texts; `finished[i]` False: response i ran out of tokens and is scored without
    EOS, as the reward model trained on cut answers."""
    model.eval()
    finished = [True] * len(prompts) if finished is None else finished
    sequences = [encode(p, r, eos=f) for p, r, f in zip(prompts, responses, finished, strict=True)]
    out = [0.0] * len(sequences)
    for idx in track(length_batches(sequences, batch_size), desc, unit="batches"):
        for i, reward in zip(idx, score(model, [sequences[i] for i in idx], encode.tokenizer.pad_token_id, device).tolist()):
            out[i] = reward
    return out


def pair_scores(model, pairs, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected in one forward: the first half of the batch is chosen, the second rejected."""
    rewards = score(model, [p[0] for p in pairs] + [p[1] for p in pairs], pad_id, device)
    return rewards[: len(pairs)], rewards[len(pairs):]


def pair_sums(model, pairs, pad_id: int, device) -> dict[str, torch.Tensor]:
    """Sums over pairs of what evaluate_pairs reports (so that ranks can add them up)."""
    c, r = pair_scores(model, pairs, pad_id, device)
    both = torch.cat([c, r])
    return {"pairs": len(pairs), "correct": (c > r).sum(), "margin": (c - r).sum(), "reward": both.sum(),
            "reward_sq": (both ** 2).sum()}


def label_sums(model, sequences, desirable: torch.Tensor, pad_id: int, device) -> dict[str, torch.Tensor]:
    """Sums over unpaired rows: the judge is right where the reward's sign is the label's (r > 0 for desirable)."""
    rewards = score(model, sequences, pad_id, device)
    desirable = desirable.to(rewards.device)
    return {"rows": len(sequences), "correct": ((rewards > 0) == desirable).sum(), "reward": rewards.sum(),
            "reward_sq": (rewards ** 2).sum(),
            "margin": torch.where(desirable, rewards, -rewards).sum()}  # how far on the right side, on average


def summarise_labels(sums: dict) -> dict:
    n = sums["rows"]
    mean = sums["reward"] / n
    var = max(sums["reward_sq"] - n * mean ** 2, 0.0) / max(n - 1, 1)
    return {"correct": round(sums["correct"]), "accuracy": sums["correct"] / n, "margin": sums["margin"] / n,
            "reward_mean": mean, "reward_std": var ** 0.5}


@torch.no_grad()
def evaluate_labels(model, sequences, desirable: list[bool], pad_id: int, device, batch_size: int = EVAL_BATCH) -> dict:
    model.eval()
    totals: dict = {}
    labels = torch.tensor(desirable, dtype=torch.bool)
    for start in tqdm(range(0, len(sequences), batch_size), desc="judge rows", unit="batch", leave=False, disable=None):
        for k, v in label_sums(model, sequences[start:start + batch_size], labels[start:start + batch_size],
                               pad_id, device).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return summarise_labels(totals)


def summarise(sums: dict) -> dict:
    n = sums["pairs"]
    mean = sums["reward"] / (2 * n)
    var = max(sums["reward_sq"] - 2 * n * mean ** 2, 0.0) / max(2 * n - 1, 1)
    return {"correct": round(sums["correct"]), "accuracy": sums["correct"] / n, "margin": sums["margin"] / n,
            "reward_mean": mean, "reward_std": var ** 0.5}


@torch.no_grad()
def evaluate_pairs(model, pairs, pad_id: int, device, batch_size: int = EVAL_BATCH, desc: str = "judge pairs") -> dict:
    model.eval()
    totals: dict = {}
    for start in tqdm(range(0, len(pairs), batch_size), desc=desc, unit="batch", leave=False, disable=None):
        for k, v in pair_sums(model, pairs[start:start + batch_size], pad_id, device).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return summarise(totals)
