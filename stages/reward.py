"""reward: a Bradley-Terry reward model (the SFT backbone + a scalar head) trained on the training pairs.
Saves models/reward (AutoModelForSequenceClassification) and logs metrics/reward (DVCLive)."""

import logging

from preftune import data, modeling
from preftune.errors import exit_on_user_error
from preftune.params import section, start_stage
from preftune.paths import REWARD, SFT, prepared
from preftune.reward_model import gold_agreement, load_reward_model, train_reward_model
from preftune.training import live_logger, log_metrics

log = logging.getLogger("reward")


def main() -> None:
    params = start_stage(__doc__)
    seed, model_cfg, cfg = params["seed"], section(params, "model"), section(params, "reward")
    modeling.seed_everything(seed)
    device = modeling.resolve_device(model_cfg["device"])

    train = data.read_jsonl(prepared("train"))
    heldout = data.read_jsonl(prepared("heldout"))
    gold = data.read_jsonl(prepared("gold"))
    tokenizer = modeling.load_tokenizer(SFT)
    model = load_reward_model(SFT).to(device)

    live = live_logger("metrics/reward")
    metrics = train_reward_model(model, tokenizer, train, heldout, cfg, model_cfg["max_length"], seed, device, live)
    if gold:
        policy = modeling.load_causal_lm(SFT).to(device)
        metrics.update(gold_agreement(model, tokenizer, policy, gold, model_cfg["max_length"],
                                      cfg["agreement_prompts"], cfg["agreement_samples"], seed, device))
        log.info("agreement with the gold checker on SFT samples: %s over %d pairs",
                 metrics["gold_agreement"], metrics["gold_agreement_pairs"])
    log_metrics(live, {k: metrics.get(k) for k in ("gold_agreement", "gold_agreement_pairs", "truncated",
                                                   "boundary_merges")})
    live.end()
    model.save_pretrained(REWARD)
    tokenizer.save_pretrained(REWARD)


if __name__ == "__main__":
    with exit_on_user_error("reward"):
        main()
