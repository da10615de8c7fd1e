"""generate: the answers that evaluate compares, made once. SFT and DPO answer greedily the held-out prompts (one
per prompt) and, on the built-in task, the validation and gold prompts, each prompt fitted to max_length by
prepare's rule. Also what needs the policies themselves: the KL estimate of DPO from SFT on the held-out prompts and
the DPO policy's implicit-reward accuracy on the preference pairs.

Writes data/generations/<set>.jsonl (per prompt: the fitted prompt, each policy's answer and whether it ended) and
data/generations/policies.json (the KL, the implicit-reward hits, the prompts cut). The judge stage judges these
answers; changing the judge reruns judging, not this."""

from preftune.pipeline import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before torch loads: the CPU libraries read their settings once (numerics.py)

import logging

from preftune.judging.evaluation import Generation
from preftune.judging.prompt_sets import POLICIES, eval_sets, judge_pairs
from preftune.model import runtime
from preftune.pipeline import files
from preftune.pipeline.errors import exit_on_user_error
from preftune.pipeline.params import section, start_stage
from preftune.pipeline.paths import POLICY_MEASURES, generations

log = logging.getLogger("generate")


def main() -> None:
    params = start_stage("generate", __doc__)
    seed, model_cfg, cfg = params["seed"], section(params, "model"), section(params, "evaluate")
    runtime.seed_everything(seed)
    gen = Generation(model_cfg, cfg, seed)
    metrics = {}
    sets = eval_sets(cfg["prompts"], seed)
    for name, records in sets.items():
        answered = gen.answer(records) if records else None
        files.write_jsonl(generations(name), [] if answered is None else [
            {"prompt": p, "answers": {m: answered.answers[m][i] for m in POLICIES},
             "finished": {m: answered.finished[m][i] for m in POLICIES}} for i, p in enumerate(answered.prompts)])
        if name == "heldout":
            metrics["kl_dpo_sft"] = gen.kl(answered.prompts)  # sampled answers to the same fitted prompts
        log.info("%s: %d prompts answered by %s", name, len(records), " and ".join(POLICIES))
    # The DPO policy as its own judge, on the held-out pairs and on fresh ones no stage trained on (RewardBench's
    # score for DPO models)
    pairs = judge_pairs(cfg["prompts"], seed)
    metrics["implicit_reward_hits"] = gen.implicit_reward_hits(pairs["pairs_heldout"])  # (right, pairs)
    metrics["implicit_reward_hits_fresh"] = gen.implicit_reward_hits(pairs["pairs_fresh"])
    metrics["prompts_truncated"] = gen.prompts_truncated
    files.write_json(POLICY_MEASURES, {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()})
    log.info("KL(DPO || SFT) %.3f per answer; %d prompts cut to fit", metrics["kl_dpo_sft"], gen.prompts_truncated)


if __name__ == "__main__":
    with exit_on_user_error("generate"):
        main()
