"""The policies an evaluation compares and their answers: SFT and DPO (or an on-policy round's models) answer the
same fitted prompts greedily (the generate stage, and an on-policy round's evaluation); the KL between them; the DPO
policy's own implicit reward."""

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
from ..model import loading, runtime
from ..model.generation import generate_answers
from ..model.logprobs import sequence_logprobs
from ..pipeline.paths import DPO, DPO_ADAPTER, SFT


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
class Answered:
    """Every policy's greedy answer to the same fitted prompts, and whether each ended (EOS) or ran out of tokens."""

    prompts: list[str]
    answers: dict[str, list[str]]
    finished: dict[str, list[bool]]


class Generation:
    """The policies' side of an evaluation: the tokenizer, both policies, the Encoder and the settings; their
    answers to fitted prompts, the KL estimate and the DPO policy's implicit reward."""

    def __init__(self, model_cfg: dict, cfg: dict, seed: int, others: dict[str, str] | None = None):
        self.cfg, self.seed, self.max_length = cfg, seed, model_cfg["max_length"]
        self.device = runtime.resolve_device(model_cfg["device"])
        self.tokenizer = loading.load_tokenizer(SFT)
        self.policies = Policies(self.device, others)
        self.encode = Encoder(self.tokenizer, self.max_length)
        self.prompts_truncated = 0

    def fit_prompts(self, rows: list[dict]) -> list[str]:
        """The rows' prompts cut by prepare's rule (length_rule.fit_prompts: a conversation keeps its system message
        and headers) so that prompt + answer + EOS fit max_length; the same text is then generated from and scored.
        Counted in prompts_truncated."""
        fitted, cut = length_rule.fit_prompts(rows, self.encode, length_rule.generation_budget(
            self.max_length, self.cfg["max_new_tokens"]), formats.renderer(self.tokenizer))
        self.prompts_truncated += cut
        return fitted

    def answer(self, rows: list[dict]) -> Answered:
        """Greedy answers of every policy to the rows' fitted prompts."""
        prompts = self.fit_prompts(rows)
        gen = {"max_new_tokens": self.cfg["max_new_tokens"], "batch_size": self.cfg["batch_size"],
               "max_length": self.max_length}
        answers, finished = {}, {}
        with runtime.autocast(self.device, self.cfg["precision"]):
            for m in self.policies.names:
                stats: dict = {}
                answers[m] = self.policies.answers(m, self.tokenizer, prompts, stats=stats, **gen)
                finished[m] = stats["finished"]
        return Answered(prompts, answers, finished)

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
