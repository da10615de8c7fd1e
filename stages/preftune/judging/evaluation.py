"""The policies an evaluation compares, and the comparison: SFT and DPO (or an on-policy round's models) answer
the same fitted prompts greedily, the reward model scores every answer, and the gold checker rules on them. The
evaluate and evaluate_round stages both build on it."""

from __future__ import annotations

import contextlib
import os
import statistics
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..data import formats, length_rule
from ..data.encoding import EVAL_BATCH, Encoder, collate, length_batches, to_device
from ..data.formats import is_unpaired
from ..data.gold import is_correct
from ..model import loading, runtime
from ..model.generation import generate_answers
from ..model.logprobs import sequence_logprobs
from ..model.reward_model import evaluate_labels, evaluate_pairs, load_reward_model, score_texts
from ..pipeline.paths import DPO, DPO_ADAPTER, REWARD, SFT
from . import win_rates

POLICIES = ("sft", "dpo")


class Policies:
    """SFT and the policies compared with it: by default models/dpo, whose LoRA adapter is switched off to get the
    SFT model back, so that one copy of the base weights serves both; `others` (name: model directory, as an
    on-policy round's evaluation passes) are loaded whole."""

    def __init__(self, device, others: dict[str, str] | None = None):
        self.sft = loading.load_causal_lm(SFT).to(device)
        self.lora = others is None and os.path.isdir(DPO_ADAPTER)
        if self.lora:
            self.models = {"dpo": loading.load_adapter(self.sft, DPO_ADAPTER).to(device)}
        else:
            self.models = {name: loading.load_causal_lm(path).to(device)
                           for name, path in (others or {"dpo": DPO}).items()}

    @property
    def names(self) -> tuple[str, ...]:
        return ("sft", *self.models)

    def answers(self, which: str, tokenizer, prompts, **kw) -> list[str]:
        if which != "sft":
            return generate_answers(self.models[which], tokenizer, prompts, desc=f"{which} answers", **kw)
        if self.lora:
            with self.models["dpo"].disable_adapter():
                return generate_answers(self.models["dpo"], tokenizer, prompts, desc=f"{which} answers", **kw)
        return generate_answers(self.sft, tokenizer, prompts, desc=f"{which} answers", **kw)

    @torch.no_grad()
    def logprobs(self, which: str, sequences, pad: int, device) -> torch.Tensor:
        """Summed response log-probs of `sequences` under policy `which`, batched by length."""
        model = self.models["dpo"] if self.lora else (self.sft if which == "sft" else self.models[which])
        adapter_off = self.lora and which == "sft"
        out = torch.zeros(len(sequences))
        for idx in length_batches(sequences, EVAL_BATCH):
            batch = to_device(collate([sequences[i] for i in idx], pad), device)
            with model.disable_adapter() if adapter_off else contextlib.nullcontext():
                out[idx] = sequence_logprobs(model.eval(), batch)[0].float().cpu()
        return out

    @torch.no_grad()
    def kl_estimate(self, tokenizer, prompts, samples: int, max_new_tokens: int, max_length: int, seed: int, device,
                    which: str = "dpo") -> float:
        """Monte Carlo KL(policy || sft) per sequence: E_{y ~ policy}[log pi(y|x) - log pi_sft(y|x)]."""
        repeated = [p for p in prompts for _ in range(samples)]
        answers = self.answers(which, tokenizer, repeated, max_new_tokens=max_new_tokens, sample=True, seed=seed,
                               max_length=max_length)
        encode = Encoder(tokenizer, max_length)
        sequences = [encode(p, a) for p, a in zip(repeated, answers)]
        policy, diffs = self.models[which].eval(), []
        for idx in tqdm(length_batches(sequences, EVAL_BATCH), desc="KL estimate", unit="batch", leave=False,
                        disable=None):
            batch = to_device(collate([sequences[i] for i in idx], tokenizer.pad_token_id), device)
            policy_lp, _ = sequence_logprobs(policy, batch)
            if self.lora:
                with policy.disable_adapter():
                    sft_lp, _ = sequence_logprobs(policy, batch)
            else:
                sft_lp, _ = sequence_logprobs(self.sft.eval(), batch)
            diffs += (policy_lp - sft_lp).tolist()
        return statistics.fmean(diffs)


@dataclass
class Compared:
    """Both policies' greedy answers to the same (fitted) prompts and the judge's reward for each."""

    prompts: list[str]
    answers: dict[str, list[str]]
    rewards: dict[str, list[float]]

    def versus(self, name: str) -> "Compared":
        """Policy `name` against SFT, as the "dpo" side of every summary below."""
        return Compared(self.prompts, {"sft": self.answers["sft"], "dpo": self.answers[name]},
                        {"sft": self.rewards["sft"], "dpo": self.rewards[name]})

    @property
    def identical(self) -> list[bool]:
        return [a == b for a, b in zip(self.answers["dpo"], self.answers["sft"])]

    def verdicts(self) -> list[str]:
        """win_rates.verdict per prompt: "a" (DPO wins), "tie" or "b" (SFT wins)."""
        return [win_rates.verdict(d, s, same)
                for d, s, same in zip(self.rewards["dpo"], self.rewards["sft"], self.identical)]

    def win_rate(self) -> dict:
        return win_rates.win_rate_summary(self.rewards["dpo"], self.rewards["sft"], identical=self.identical)


class Evaluation:
    """What every step shares: the tokenizer, both policies, the judge, the Encoder and the settings."""

    def __init__(self, model_cfg: dict, cfg: dict, seed: int, others: dict[str, str] | None = None):
        self.cfg, self.seed, self.max_length = cfg, seed, model_cfg["max_length"]
        self.device = runtime.resolve_device(model_cfg["device"])
        self.tokenizer = loading.load_tokenizer(SFT)
        self.policies = Policies(self.device, others)
        self.judge = load_reward_model(REWARD).to(self.device)
        self.encode = Encoder(self.tokenizer, self.max_length)
        self.prompts_truncated = 0

    def fit_prompts(self, rows: list[dict]) -> list[str]:
        """The rows' prompts cut by prepare's rule (length_rule.fit_prompts: a conversation keeps its system message and
        headers) so that prompt + answer + EOS fit max_length; the same text is then generated from and scored.
        Counted in prompts_truncated."""
        fitted, cut = length_rule.fit_prompts(rows, self.encode, length_rule.generation_budget(
            self.max_length, self.cfg["max_new_tokens"]), formats.renderer(self.tokenizer))
        self.prompts_truncated += cut
        return fitted

    def compare(self, rows: list[dict]) -> Compared:
        """Greedy answers of every policy to the rows' fitted prompts, and the judge's rewards for them (an answer
        that ran out of tokens scored without EOS, as the judge trained on cut answers)."""
        prompts = self.fit_prompts(rows)
        gen = {"max_new_tokens": self.cfg["max_new_tokens"], "batch_size": self.cfg["batch_size"],
               "max_length": self.max_length}
        answers, rewards = {}, {}
        with runtime.autocast(self.device, self.cfg["precision"]):
            for m in self.policies.names:
                stats: dict = {}
                answers[m] = self.policies.answers(m, self.tokenizer, prompts, stats=stats, **gen)
                rewards[m] = score_texts(self.judge, self.encode, prompts, answers[m], self.device,
                                         desc=f"score {m} answers", finished=stats["finished"])
        return Compared(prompts, answers, rewards)

    def kl(self, prompts: list[str], which: str = "dpo") -> float:
        with runtime.autocast(self.device, self.cfg["precision"]):
            return self.policies.kl_estimate(self.tokenizer, prompts, self.cfg["kl_samples"], self.cfg["max_new_tokens"],
                                             self.max_length, self.seed, self.device, which)

    def implicit_reward_hits(self, rows: list[dict]) -> tuple[int, int]:
        """(pairs the DPO policy itself ranks right, pairs): its implicit reward beta * (log pi - log pi_sft) is
        higher for chosen than for rejected (beta > 0 does not change the order), as RewardBench scores DPO models.
        (0, 0) for unpaired rows."""
        if not rows or is_unpaired(rows):
            return 0, 0
        pad = self.tokenizer.pad_token_id
        with runtime.autocast(self.device, self.cfg["precision"]):
            reward = {}
            for kind in ("chosen", "rejected"):
                sequences = [self.encode.row(r, kind, count=False) for r in rows]
                reward[kind] = (self.policies.logprobs("dpo", sequences, pad, self.device)
                                - self.policies.logprobs("sft", sequences, pad, self.device))
        margin = reward["chosen"] - reward["rejected"]
        return int((margin > 0).sum()), len(rows)

    def judge_hits(self, rows: list[dict]) -> tuple[int, int]:
        """(rows the judge gets right, rows): a pair where it scores chosen strictly above rejected, or an unpaired
        row whose reward has the label's sign (r > 0 for a desirable answer)."""
        if not rows:
            return 0, 0
        pad, encode = self.tokenizer.pad_token_id, self.encode
        with runtime.autocast(self.device, self.cfg["precision"]):
            if is_unpaired(rows):
                stats = evaluate_labels(self.judge, [encode.row(r, "completion") for r in rows],
                                        [r["label"] for r in rows], pad, self.device)
            else:
                stats = evaluate_pairs(self.judge, [(encode.row(r, "chosen"), encode.row(r, "rejected")) for r in rows],
                                       pad, self.device)
        return stats["correct"], len(rows)


def one_per_prompt(rows: list[dict]) -> list[dict]:
    """Unpaired feedback often has several rows per prompt (a good and a bad answer): generate once per prompt.
    Pairs keep one record per row, as the lab counts its 50 held-out prompts."""
    if not is_unpaired(rows):
        return rows
    return list({r["prompt"]: r for r in reversed(rows)}.values())[::-1]


def gold_verdicts(records: list[dict], compared: Compared) -> dict[str, list[bool]]:
    """The gold checker's verdict on each policy's answer to each record's prompt."""
    return {m: [is_correct(r, a) for r, a in zip(records, compared.answers[m])] for m in POLICIES}
