"""evaluate_round: an on-policy round against the policy it started from, `python stages/evaluate_round.py <round>`
(dvc.yaml runs one per entry of params.yaml online.rounds).

Both policies (the round's and the one it was trained from: models/dpo or an earlier round) answer the same
prompts, greedily, as evaluate's DPO does, and each is compared with SFT: the reward model's win rate on the
held-out prompts, KL(policy || SFT), and on the built-in task the gold checker's accuracy (with a Wilson interval)
on the validation and gold prompts. The round's gold difference from its starting policy has a paired interval,
and a round whose judge win rate rose while its gold accuracy fell is flagged as reward hacking, in the log and in
metrics/online/<round>/eval.json."""

from preftune.pipeline import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before torch loads: the CPU libraries read their settings once (numerics.py)

import logging
import time
from dataclasses import dataclass

from preftune.data.gold import gold_verdicts
from preftune.judging import win_rates
from preftune.judging.evaluation import Generation
from preftune.judging.prompt_sets import one_per_prompt
from preftune.judging.verdicts import verdict
from preftune.model import runtime
from preftune.model.reward_model import load_reward_model, score_texts
from preftune.pipeline import files
from preftune.pipeline.errors import exit_on_user_error
from preftune.pipeline.params import section, start_stage
from preftune.pipeline.paths import REWARD, check_set, policy_dir, prepared, round_metrics
from preftune.train.rounds import reward_hacking, round_spec

log = logging.getLogger("evaluate_round")
SIDES = ("previous", "round")


@dataclass
class Compared:
    """Every policy's greedy answers to the same (fitted) prompts and the reward model's reward for each."""

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
        """verdicts.verdict per prompt: "a" (DPO wins), "tie" or "b" (SFT wins)."""
        return [verdict(d, s, same)
                for d, s, same in zip(self.rewards["dpo"], self.rewards["sft"], self.identical)]

    def win_rate(self) -> dict:
        return win_rates.win_rate_summary(self.rewards["dpo"], self.rewards["sft"], identical=self.identical)


class Evaluation(Generation):
    """A round's evaluation in one stage: the policies' answers, scored by the reward model (the round's judge)."""

    def __init__(self, model_cfg: dict, cfg: dict, seed: int, others: dict[str, str] | None = None):
        super().__init__(model_cfg, cfg, seed, others)
        self.judge = load_reward_model(REWARD).to(self.device)

    def compare(self, rows: list[dict]) -> Compared:
        """Greedy answers of every policy to the rows' fitted prompts, and the reward model's rewards for them (an
        answer that ran out of tokens scored without EOS, as the judge trained on cut answers)."""
        answered = self.answer(rows)
        with runtime.autocast(self.device, self.cfg["precision"]):
            rewards = {m: score_texts(self.judge, self.encode, answered.prompts, answered.answers[m], self.device,
                                      desc=f"score {m} answers", finished=answered.finished[m])
                       for m in self.policies.names}
        return Compared(answered.prompts, answered.answers, rewards)


def gold_figures(ev: Evaluation, records: list[dict], prefix: str) -> dict:
    """Gold accuracy of SFT, the starting policy and the round on `records`' prompts; the round's difference from
    its start (paired) and how often the judge sides with the gold checker on the round's answers."""
    if not records:
        return {}
    compared = ev.compare(records)
    correct = {side: gold_verdicts(records, compared.versus(side).answers) for side in SIDES}
    n = len(records)
    out = {f"{prefix}gold_n": n, f"{prefix}gold_accuracy_sft": sum(correct["round"]["sft"]) / n}
    for side in SIDES:
        hits = sum(correct[side]["dpo"])
        out[f"{prefix}gold_accuracy_{side}"] = hits / n
        out[f"{prefix}gold_accuracy_{side}_ci95"] = list(win_rates.wilson_interval(hits, n))
    paired = win_rates.paired_difference(correct["round"]["dpo"], correct["previous"]["dpo"])
    out[f"{prefix}gold_diff_vs_previous"] = paired["difference"]
    out[f"{prefix}gold_diff_vs_previous_ci95"] = paired["difference_ci95"]
    rounds = compared.versus("round")
    prefers = [None if v == "tie" else v == "a" for v in rounds.verdicts()]
    agreement = win_rates.judge_agreement(prefers, correct["round"]["dpo"], correct["round"]["sft"])
    out[f"{prefix}judge_gold_agreement"] = agreement["agreement"]
    return out


def main() -> None:
    params = start_stage("evaluate_round", __doc__, item="round")
    name = params.item
    start, _ = round_spec(params, name)
    seed, model_cfg, cfg = params["seed"], section(params, "model"), section(params, "evaluate")
    runtime.seed_everything(seed)
    started = time.perf_counter()
    ev = Evaluation(model_cfg, cfg, seed, others={"previous": policy_dir(start), "round": policy_dir(name)})
    heldout = one_per_prompt(files.read_jsonl(prepared("heldout")))

    compared = ev.compare(heldout)
    metrics = {"round": name, "from": start}
    for side in SIDES:
        summary = compared.versus(side).win_rate()
        prefix = "" if side == "round" else "previous_"
        metrics.update({f"{prefix}{k}": summary[k] for k in ("win_rate", "win_rate_ci95", "wins", "ties", "losses")})
        metrics[f"{prefix}kl_sft"] = ev.kl(compared.prompts, side)
    metrics.update(gold_figures(ev, files.read_optional_jsonl(check_set("validation")), "validation_"))
    metrics.update(gold_figures(ev, files.read_optional_jsonl(check_set("gold")), ""))
    metrics["reward_hacking"] = reward_hacking(
        {"win_rate": metrics["previous_win_rate"], "gold_accuracy": metrics.get("gold_accuracy_previous")},
        {"win_rate": metrics["win_rate"], "gold_accuracy": metrics.get("gold_accuracy_round")})
    metrics = {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}
    files.write_json(f"{round_metrics(name)}/eval.json", metrics)

    gold = (f" | gold accuracy {metrics['gold_accuracy_previous']:.3f} -> {metrics['gold_accuracy_round']:.3f} "
            f"(difference {metrics['gold_diff_vs_previous']:+.3f}, 95% [{metrics['gold_diff_vs_previous_ci95'][0]:+.3f}, "
            f"{metrics['gold_diff_vs_previous_ci95'][1]:+.3f}])" if "gold_accuracy_round" in metrics else "")
    log.info("round %s (from %s): win rate against SFT %.3f -> %.3f | KL %.3f -> %.3f%s; %.0f s", name, start,
             metrics["previous_win_rate"], metrics["win_rate"], metrics["previous_kl_sft"], metrics["kl_sft"], gold,
             time.perf_counter() - started)
    if metrics["reward_hacking"]:
        log.warning("round %s: REWARD HACKING: the judge's win rate rose while gold accuracy fell; the policy learnt "
                    "what the reward model likes, not the task (online.judge: gold, or a lower lr / fewer epochs)", name)


if __name__ == "__main__":
    with exit_on_user_error("evaluate_round"):
        main()
