"""reward: a Bradley-Terry reward model (the SFT backbone + a scalar head) trained on the training pairs (on
unpaired feedback: a pointwise judge of the labels, reward_model.pointwise_loss).
Saves models/reward (AutoModelForSequenceClassification) and logs metrics/reward (DVCLive)."""

from preftune import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before torch loads: the CPU libraries read their settings once (numerics.py)

import logging

from preftune import data, modeling
from preftune.batching import Encoder
from preftune.cards import write_model_card
from preftune.errors import exit_on_user_error
from preftune.paths import REWARD, SFT, check_set, live, prepared
from preftune.reward_model import gold_agreement, load_reward_model
from preftune.reward_training import reward_objective
from preftune.training import enable_checkpointing, fit, start_training

log = logging.getLogger("reward")


def main() -> None:
    params, model_cfg, cfg, run, seed = start_training("reward", __doc__)
    tokenizer = modeling.load_tokenizer(SFT)
    encode = Encoder(tokenizer, model_cfg["max_length"])
    # Built before any model loads: a batch larger than the data is one line.
    objective = reward_objective(run, encode, data.read_jsonl(prepared("train")), data.read_jsonl(prepared("heldout")),
                                 cfg)
    model = load_reward_model(SFT)
    if cfg["gradient_checkpointing"]:
        enable_checkpointing(model)

    metrics_live = run.live(live("reward"))
    modeling.seed_everything(seed + run.rank)  # dropout differs per rank
    history, trained = fit(run, model, objective, seed, metrics_live)
    metrics = {**history[-1], **encode.stats()}
    run.save_pretrained(trained, REWARD)
    if run.is_main:
        tokenizer.save_pretrained(REWARD)
        write_model_card(REWARD, "reward", params, cfg, "reward", SFT, prepared("train"))
        gold = data.read_optional_jsonl(check_set("gold"))  # the built-in task's gold prompts; none for user data
        if gold:
            model = load_reward_model(REWARD).to(run.device) if run.sharded else model
            policy = modeling.load_causal_lm(SFT).to(run.device)
            metrics.update(gold_agreement(model, tokenizer, policy, gold, model_cfg["max_length"],
                                          cfg["agreement_prompts"], cfg["agreement_samples"], seed, run.device))
            log.info("agreement with the gold checker on SFT samples: %s over %d pairs",
                     metrics["gold_agreement"], metrics["gold_agreement_pairs"])
    run.end({k: metrics.get(k) for k in ("gold_agreement", "gold_agreement_pairs", "truncated", "boundary_merges")})


if __name__ == "__main__":
    with exit_on_user_error("reward"):
        main()
