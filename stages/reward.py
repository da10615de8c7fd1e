"""reward: a Bradley-Terry reward model (the SFT backbone + a scalar head) trained on the training pairs (on
unpaired feedback: a pointwise judge of the labels, reward_model.pointwise_loss).
Saves models/reward (AutoModelForSequenceClassification) and logs metrics/reward (DVCLive)."""

import logging

from preftune import data, modeling
from preftune.errors import ConfigError, exit_on_user_error
from preftune.params import section, start_stage
from preftune.paths import REWARD, SFT, check_set, prepared
from preftune.reward_model import gold_agreement, load_reward_model
from preftune.reward_training import train_reward_model
from preftune.training import Run, enable_checkpointing, log_metrics

log = logging.getLogger("reward")


def main() -> None:
    params = start_stage(__doc__)
    seed, model_cfg, cfg = params["seed"], section(params, "model"), section(params, "reward")
    run = Run(model_cfg["device"], cfg, "reward", params)  # one process, or this rank of a torchrun / accelerate launch
    modeling.seed_everything(seed)  # the same on every rank: the same initial head

    train = data.read_jsonl(prepared("train"))
    heldout = data.read_jsonl(prepared("heldout"))
    if len(train) < cfg["batch_size"]:
        raise ConfigError(f"params.yaml: reward.batch_size: {cfg['batch_size']} is more than the {len(train)} "
                          f"training rows; lower it, or hold out fewer rows (data.heldout)")
    gold = data.read_optional_jsonl(check_set("gold"))  # the built-in task's gold prompts; none for user data
    tokenizer = modeling.load_tokenizer(SFT)
    model = load_reward_model(SFT)
    if cfg["gradient_checkpointing"]:
        enable_checkpointing(model)

    live = run.live("metrics/reward")
    modeling.seed_everything(seed + run.rank)  # dropout differs per rank
    metrics, scorer = train_reward_model(run, model, tokenizer, train, heldout, cfg, model_cfg["max_length"], seed,
                                         live)
    run.save_pretrained(scorer, REWARD)
    if run.is_main:
        tokenizer.save_pretrained(REWARD)
        if gold:
            model = load_reward_model(REWARD).to(run.device) if run.sharded else model
            policy = modeling.load_causal_lm(SFT).to(run.device)
            metrics.update(gold_agreement(model, tokenizer, policy, gold, model_cfg["max_length"],
                                          cfg["agreement_prompts"], cfg["agreement_samples"], seed, run.device))
            log.info("agreement with the gold checker on SFT samples: %s over %d pairs",
                     metrics["gold_agreement"], metrics["gold_agreement_pairs"])
        log_metrics(live, {k: metrics.get(k) for k in ("gold_agreement", "gold_agreement_pairs", "truncated",
                                                       "boundary_merges")})
    live.end()
    run.finish()


if __name__ == "__main__":
    with exit_on_user_error("reward"):
        main()
