"""evaluate: DPO vs SFT, from generate's answers and judge's judgments. The win rate on the held-out prompts by
evaluate.judge (the lab's figure; strict, ties as half and length-controlled), how far to trust that judge (its
accuracy on preference pairs, position consistency, unreadable answers, agreement with the gold checker), the gold
checker's verdicts (held-out, validation and gold prompts of the built-in task), the KL, a samples table and PNG
plots. Writes metrics/eval.json, metrics/headline.json, metrics/manifest.json, metrics/per_prompt.json,
metrics/samples.csv and metrics/plots/. No model runs here.

main() reads as the list of steps: the win rate, the judge's reliability, the gold checker's verdicts, then the
outputs."""

from preftune.pipeline import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before numpy loads: the CPU libraries read their settings once (numerics.py)

import csv
import logging
import statistics
from dataclasses import dataclass

from preftune.data.gold import gold_verdicts, is_correct
from preftune.judging import plots, win_rates
from preftune.judging.pairwise import position_consistency
from preftune.judging.prompt_sets import POLICIES, eval_sets
from preftune.pipeline import files
from preftune.pipeline.errors import DataError, exit_on_user_error
from preftune.pipeline.params import section, start_stage
from preftune.pipeline.paths import (DPO, EVAL_METRICS, POLICY_MEASURES, HEADLINE, JUDGMENTS, PER_PROMPT, PLOTS,
                                     RUN_MANIFEST, SAMPLES, generations, judgments)

log = logging.getLogger("evaluate")
OUTCOME = {"a": 1.0, "tie": 0.5, "b": 0.0}  # a verdict (verdicts.verdict) as DPO's score: ties as half


def gold_summary(correct: dict[str, list[bool]], prefix: str) -> dict:
    """Both gold accuracies and the gold win/tie/loss of DPO against SFT, named <prefix>gold_*."""
    paired = win_rates.paired_difference(correct["dpo"], correct["sft"])
    return {f"{prefix}gold_accuracy_sft": paired["accuracy_b"], f"{prefix}gold_accuracy_dpo": paired["accuracy_a"],
            f"{prefix}gold_wins": paired["gold_wins"],
            f"{prefix}gold_ties": paired["n"] - paired["gold_wins"] - paired["gold_losses"],
            f"{prefix}gold_losses": paired["gold_losses"]}


@dataclass
class Judged:
    """One evaluation set as generate answered it and judge judged it: per prompt the record, each policy's answer
    and the judgment of DPO's answer ("a") against SFT's ("b"). verdicts[i] is None where the judge's answer could
    not be read; such prompts are counted (judge_unparseable), never guessed, and left out of the rates."""

    records: list[dict]
    answers: dict[str, list[str]]
    judgments: list[dict]

    @classmethod
    def load(cls, name: str, records: list[dict]) -> "Judged":
        rows, found = files.read_jsonl(generations(name)), files.read_jsonl(judgments(name))
        if not len(rows) == len(found) == len(records):
            raise DataError(f"{generations(name)}, {judgments(name)}: {len(rows)} answers and {len(found)} "
                            f"judgments for {len(records)} prompts; run `dvc repro` to bring them in line")
        return cls(records, {m: [r["answers"][m] for r in rows] for m in POLICIES}, found)

    @property
    def verdicts(self) -> list[str | None]:
        return [j["verdict"] for j in self.judgments]

    @property
    def judged(self) -> list[int]:
        return [i for i, v in enumerate(self.verdicts) if v is not None]

    def summary(self) -> dict:
        """The win rate of DPO over the judged prompts (win_rates.verdict_summary); none when no verdict could be
        read (the counts say so: n is 0)."""
        if not self.judged:
            return {"wins": 0, "ties": 0, "losses": 0, "n": 0, "win_rate": None, "win_rate_ties_half": None,
                    "win_rate_ci95": None}
        return win_rates.verdict_summary([self.verdicts[i] for i in self.judged])

    def rewards(self) -> dict[str, list[float]] | None:
        """Each policy's rewards, for a reward-model judge (None for a judge that gives verdicts only)."""
        if not self.judgments or "rewards" not in self.judgments[0]:
            return None
        return {"sft": [j["rewards"][1] for j in self.judgments], "dpo": [j["rewards"][0] for j in self.judgments]}


def heldout_metrics(heldout: Judged, seed: int) -> dict:
    """The lab's headline: held-out prompts, greedy answers, the judge's verdicts."""
    metrics = heldout.summary()
    judged = heldout.judged
    if judged:
        # The same verdicts with the judge's taste for length taken out (AlpacaEval 2's control), in characters: a
        # tokenizer-free length that reads the same for any model.
        metrics.update(win_rates.length_controlled_win_rate([OUTCOME[heldout.verdicts[i]] for i in judged],
                                                            [len(heldout.answers["dpo"][i]) for i in judged],
                                                            [len(heldout.answers["sft"][i]) for i in judged],
                                                            seed=seed))
    else:
        log.warning("none of the judge's answers on the %d held-out prompts could be read as a verdict: no win rate; "
                    "the raw answers are in %s", len(heldout.verdicts), judgments("heldout"))
        lengths = {m: sum(map(len, heldout.answers[m])) for m in POLICIES}
        metrics.update({"lc_win_rate": None, "lc_win_rate_ci95": None, "lc_length_coefficient": None,
                        "lc_penalty_c": None, "lc_extreme_change": None,
                        "length_ratio": lengths["dpo"] / max(1, lengths["sft"])})  # as the fit reports it
    if metrics["lc_extreme_change"]:  # AlpacaEval's guard: the length fit moved the rate implausibly far
        log.warning("length-controlled win rate %.3f is far from the raw one (ties as half) %.3f: the length fit may "
                    "have failed (length coefficient %.2f); read it with care", metrics["lc_win_rate"],
                    metrics["win_rate_ties_half"], metrics["lc_length_coefficient"])
    rewards = heldout.rewards()
    metrics.update({
        "reward_mean_sft": statistics.fmean(rewards["sft"]) if rewards else None,
        "reward_mean_dpo": statistics.fmean(rewards["dpo"]) if rewards else None,
        "answer_words_sft": statistics.fmean(len(a.split()) for a in heldout.answers["sft"]),
        "answer_words_dpo": statistics.fmean(len(a.split()) for a in heldout.answers["dpo"]),
        "identical_share": statistics.fmean(a == b for a, b in zip(heldout.answers["dpo"], heldout.answers["sft"])),
    })
    return metrics


def pair_hits(records: list[dict]) -> tuple[int, int]:
    """(pairs the judge ranked as labelled, pairs): chosen strictly preferred ("a"), or an unpaired row's reward
    on the label's side. An unreadable verdict counts as a miss."""
    return sum(r["verdict"] == "a" if "verdict" in r else r["correct"] for r in records), len(records)


def judge_quality(sets: dict[str, Judged], pairs: dict[str, list[dict]], judge: dict) -> dict:
    """How far to trust the judge: its accuracy on preference pairs (the uninformative flag), how often a verdict
    survives swapping the answers, how many answers could not be read, and what it cost."""
    records = [j for judged in sets.values() for j in judged.judgments] + [r for p in pairs.values() for r in p]
    out = win_rates.judge_reliability(pair_hits(pairs["pairs_heldout"]), pair_hits(pairs["pairs_fresh"]))
    out.update({"judge": judge["judge"], "judge_calls": judge["calls"],
                "judge_position_consistency": position_consistency(records),
                "judge_unparseable": sum(r.get("verdict", True) is None for r in records)})
    return out


def validation_metrics(validation: Judged) -> dict:
    """Settings are chosen on these: fresh prompts that no reported figure uses."""
    if not validation.records:
        return {}
    summary = validation.summary()
    return {**{f"validation_{k}": summary[k] for k in ("win_rate", "wins", "ties", "losses")},
            **gold_summary(gold_verdicts(validation.records, validation.answers), "validation_")}


def gold_metrics(gold: Judged, per_prompt: dict | None = None) -> dict:
    """The honest measure: fresh prompts, the gold checker; and how often the judge sides with it. The verdicts
    per prompt go into `per_prompt["gold"]`."""
    if not gold.records:
        return {}
    correct = gold_verdicts(gold.records, gold.answers)
    if per_prompt is not None:
        per_prompt["gold"] = {f"correct_{m}": [int(c) for c in correct[m]] for m in POLICIES}
    paired = win_rates.paired_difference(correct["dpo"], correct["sft"])
    prefers = [None if v in ("tie", None) else v == "a" for v in gold.verdicts]
    agreement = win_rates.judge_agreement(prefers, correct["dpo"], correct["sft"])
    return {
        "gold_n": paired["n"], "gold_accuracy_sft": paired["accuracy_b"], "gold_accuracy_dpo": paired["accuracy_a"],
        "gold_accuracy_diff": paired["difference"], "gold_accuracy_diff_ci95": paired["difference_ci95"],
        "gold_win_rate": paired["gold_win_rate"], "gold_loss_rate": paired["gold_loss_rate"],
        "judge_gold_agreement": agreement["agreement"], "judge_gold_decisive": agreement["n_decisive"],
    }


def write_samples(heldout: Judged) -> None:
    """metrics/samples.csv: each held-out prompt, both answers, their rewards (a reward-model judge's), gold
    verdicts and the winner ("unread" where the judge's answer could not be read)."""
    winner = {"a": "dpo", "tie": "tie", "b": "sft", None: "unread"}
    rewards, rows = heldout.rewards(), []
    for i, (record, verdict) in enumerate(zip(heldout.records, heldout.verdicts)):
        gold = {m: (is_correct(record, heldout.answers[m][i]) if "correct" in record else "") for m in POLICIES}
        rows.append({"prompt": record["prompt"], "sft_answer": heldout.answers["sft"][i],
                     "dpo_answer": heldout.answers["dpo"][i],
                     "sft_reward": round(rewards["sft"][i], 4) if rewards else "",
                     "dpo_reward": round(rewards["dpo"][i], 4) if rewards else "", "sft_gold_correct": gold["sft"],
                     "dpo_gold_correct": gold["dpo"], "winner": winner[verdict]})
    with files.atomic_open(SAMPLES) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_manifest(metrics: dict) -> None:
    """The lab's run manifest: what was trained (models/dpo/manifest.json) and how it did."""
    trained = files.read_json(f"{DPO}/manifest.json")
    files.write_json(RUN_MANIFEST, {
        **{k: trained[k] for k in ("seed", "beta", "lr", "epochs", "loss", "batch_size", "effective_batch_size")},
        **{k: metrics.get(k) for k in ("win_rate", "win_rate_ci95", "lc_win_rate", "lc_win_rate_ci95", "wins", "ties",
                                       "losses", "win_rate_informative",
                                       "judge_accuracy", "judge_accuracy_fresh", "gold_accuracy_sft",
                                       "gold_accuracy_dpo")}})


def headline(metrics: dict) -> dict:
    """The few numbers that decide a comparison, short-named so that `dvc metrics show metrics/headline.json` fits
    80 columns: the strict and length-controlled win rates with their 95% intervals (as text: "lo-hi"), DPO's gold
    accuracy (built-in task; null elsewhere), the judge's accuracy (fresh pairs when there are any) and the KL."""
    def span(ci) -> str | None:
        return None if ci is None else f"{ci[0]:.2f}-{ci[1]:.2f}"

    fresh = bool(metrics["judge_pairs_fresh"])
    return {"win": _round(metrics["win_rate"]), "win_ci": span(metrics["win_rate_ci95"]),
            "lc": _round(metrics["lc_win_rate"]), "lc_ci": span(metrics["lc_win_rate_ci95"]),
            "gold": metrics.get("gold_accuracy_dpo"),
            "judge": _round(metrics["judge_accuracy_fresh" if fresh else "judge_accuracy"]),
            "kl": _round(metrics["kl_dpo_sft"])}


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def log_summary(metrics: dict) -> None:
    fresh = bool(metrics["judge_pairs_fresh"])
    which = "judge_accuracy_fresh" if fresh else "judge_accuracy"
    if metrics[which] is None:
        judged_by = "no pairs to test the judge"
    else:
        lo, hi = metrics[f"{which}_ci95"]
        pairs = metrics["judge_pairs_fresh" if fresh else "judge_pairs"]
        judged_by = (f"judge accuracy {metrics[which]:.2f} [{lo:.2f}, {hi:.2f}] on {pairs} "
                     f"{'fresh' if fresh else 'held-out'} pairs")
    if metrics["win_rate"] is None:
        rate = "no win rate (no held-out verdict could be read"
    else:
        lo, hi = metrics["lc_win_rate_ci95"]
        rate = (f"win rate {metrics['win_rate']:.3f} (ties as half {metrics['win_rate_ties_half']:.3f}; "
                f"length-controlled {metrics['lc_win_rate']:.3f} [{lo:.3f}, {hi:.3f}]")
    log.info("%s, DPO answers %.2fx SFT's length; %d/%d/%d; %s%s%s) | gold accuracy sft %s dpo %s | KL %.3f", rate,
             metrics["length_ratio"], metrics["wins"], metrics["ties"], metrics["losses"], judged_by,
             "" if metrics["win_rate_informative"] else ": UNINFORMATIVE, the judge may be guessing",
             f"; {metrics['judge_unparseable']} judgments unreadable" if metrics["judge_unparseable"] else "",
             metrics.get("gold_accuracy_sft"), metrics.get("gold_accuracy_dpo"), metrics["kl_dpo_sft"])


def main() -> None:
    params = start_stage("evaluate", __doc__)
    limit = section(params, "evaluate")["prompts"]
    sets = {name: Judged.load(name, records) for name, records in eval_sets(limit, params["seed"]).items()}
    pairs = {name: files.read_jsonl(judgments(name)) for name in ("pairs_heldout", "pairs_fresh")}
    judge, generated = files.read_json(f"{JUDGMENTS}/judge.json"), files.read_json(POLICY_MEASURES)

    metrics = heldout_metrics(sets["heldout"], params["seed"])
    metrics["kl_dpo_sft"] = generated["kl_dpo_sft"]  # sampled answers to the same fitted prompts (generate)
    # Is the judge worth hearing? Its accuracy on the held-out pairs (the lab's 50) and on fresh pairs no stage
    # trained on (the built-in task makes 500). A win rate from a judge whose interval includes chance is noise.
    metrics.update(judge_quality(sets, pairs, judge))
    # The DPO policy as its own judge, on the same pairs (RewardBench's score for DPO models), from generate's hits
    for name, (right, n) in (("implicit_reward_accuracy", generated["implicit_reward_hits"]),
                             ("implicit_reward_accuracy_fresh", generated["implicit_reward_hits_fresh"])):
        metrics[name] = right / n if n else None
        metrics[f"{name}_ci95"] = list(win_rates.wilson_interval(right, n)) if n else None
    heldout = sets["heldout"]
    if all("correct" in r for r in heldout.records):  # the gold checker's verdict on the same held-out answers
        metrics.update(gold_summary(gold_verdicts(heldout.records, heldout.answers), "heldout_"))
    metrics.update(validation_metrics(sets["validation"]))
    # Per prompt, what the summaries above count: experiments/compare.py bootstraps over prompts and seeds with it.
    per_prompt = {"heldout": {"outcome": [OUTCOME.get(v) for v in heldout.verdicts],
                              **{f"length_{m}": [len(a) for a in heldout.answers[m]] for m in POLICIES}}}
    metrics.update(gold_metrics(sets["gold"], per_prompt))
    metrics["prompts_truncated"] = generated["prompts_truncated"]
    metrics["sequences_truncated"] = judge["sequences_truncated"]
    metrics = {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}

    files.write_json(EVAL_METRICS, metrics)
    files.write_json(HEADLINE, headline(metrics))
    files.write_json(PER_PROMPT, per_prompt)
    write_manifest(metrics)
    write_samples(heldout)
    plots.render_all(metrics, heldout.rewards(), PLOTS)
    log_summary(metrics)


if __name__ == "__main__":
    with exit_on_user_error("evaluate"):
        main()
