"""reward: a Bradley-Terry reward model (the SFT backbone + a scalar head) trained on the training pairs (on
unpaired feedback: a pointwise judge of the labels, reward_model.pointwise_loss).
Saves models/reward (AutoModelForSequenceClassification) and logs metrics/reward (DVCLive)."""

from preftune.pipeline import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before torch loads: the CPU libraries read their settings once (numerics.py)

import logging
import random

from preftune.data.encoding import Encoder
from preftune.data.gold import is_correct
from preftune.model import loading, runtime
from preftune.model.generation import generate_answers
from preftune.model.reward_model import load_reward_model, score_texts
from preftune.pipeline import files
from preftune.pipeline.cards import write_model_card
from preftune.pipeline.errors import exit_on_user_error
from preftune.pipeline.paths import REWARD, SFT, check_set, live, prepared
from preftune.train.loop import fit, start_training
from preftune.train.memory import enable_checkpointing
from preftune.train.reward_objective import reward_objective
from preftune.train.saving import save_trained

log = logging.getLogger("reward")


def gold_agreement(model, tokenizer, policy, gold: list[dict], max_length: int, n_prompts: int, samples: int,
                   seed: int, device) -> dict:
    """Does the reward model prefer gold-correct answers among answers it never saw?

    For `n_prompts` gold prompts, sample `samples` answers from the policy (the SFT model, whose
    outputs the judge will score later) at temperature 1. Every pair of distinct answers to one prompt
    where exactly one is gold-correct is a test: agreement is the share where the correct one scores higher.
    """
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


def main() -> None:
    params, model_cfg, cfg, run, seed = start_training("reward", __doc__)
    process = run.process
    tokenizer = loading.load_tokenizer(SFT)
    encode = Encoder(tokenizer, model_cfg["max_length"])
    # Built before any model loads: a batch larger than the data is one line.
    objective = reward_objective(process, encode, files.read_jsonl(prepared("train")),
                                 files.read_jsonl(prepared("heldout")), cfg)
    model = load_reward_model(SFT)
    if cfg["gradient_checkpointing"]:
        enable_checkpointing(model)

    metrics_live = run.logs.open(live("reward"))
    runtime.seed_everything(seed + process.rank)  # dropout differs per rank
    history, trained = fit(run, model, objective, seed, metrics_live)
    metrics = {**history[-1], **encode.stats()}
    save_trained(process, trained, REWARD)
    if process.is_main:
        tokenizer.save_pretrained(REWARD)
        write_model_card(REWARD, "reward", params, cfg, "reward", SFT, prepared("train"))
        gold = files.read_optional_jsonl(check_set("gold"))  # the built-in task's gold prompts; none for user data
        if gold:
            model = load_reward_model(REWARD).to(process.device) if process.sharded else model
            policy = loading.load_causal_lm(SFT).to(process.device)
            metrics.update(gold_agreement(model, tokenizer, policy, gold, model_cfg["max_length"],
                                          cfg["agreement_prompts"], cfg["agreement_samples"], seed, process.device))
            log.info("agreement with the gold checker on SFT samples: %s over %d pairs",
                     metrics["gold_agreement"], metrics["gold_agreement_pairs"])
    run.end({k: metrics.get(k) for k in ("gold_agreement", "gold_agreement_pairs", "truncated", "boundary_merges")})


if __name__ == "__main__":
    with exit_on_user_error("reward"):
        main()
