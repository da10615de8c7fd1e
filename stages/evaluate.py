"""evaluate: DPO vs SFT. Greedy answers on the held-out prompts judged by the reward model (the lab's
win rate), greedy answers on the gold prompts judged by the gold checker, a sequence-level KL estimate,
a samples table and PNG plots. Writes metrics/eval.json, metrics/manifest.json, metrics/samples.csv and
metrics/plots/.

main() reads as the list of steps: the win rate on the held-out prompts, the KL, the judge's own accuracy,
the gold checker's verdicts (held-out, validation and gold prompts of the built-in task), then the outputs."""

from preftune.pipeline import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before torch loads: the CPU libraries read their settings once (numerics.py)

import csv
import logging
import statistics

from preftune.data.gold import is_correct
from preftune.judging import plots, win_rates
from preftune.judging.evaluation import POLICIES, Compared, Evaluation, gold_verdicts, one_per_prompt
from preftune.model import runtime
from preftune.pipeline import files
from preftune.pipeline.errors import exit_on_user_error
from preftune.pipeline.params import section, start_stage
from preftune.pipeline.paths import (DPO, EVAL_METRICS, HEADLINE, PER_PROMPT, PLOTS, RUN_MANIFEST, SAMPLES, check_set,
                                     prepared)

log = logging.getLogger("evaluate")
OUTCOME = {"a": 1.0, "tie": 0.5, "b": 0.0}  # a verdict (win_rates.verdict) as DPO's score: ties as half


def gold_summary(correct: dict[str, list[bool]], prefix: str) -> dict:
    """Both gold accuracies and the gold win/tie/loss of DPO against SFT, named <prefix>gold_*."""
    paired = win_rates.paired_difference(correct["dpo"], correct["sft"])
    return {f"{prefix}gold_accuracy_sft": paired["accuracy_b"], f"{prefix}gold_accuracy_dpo": paired["accuracy_a"],
            f"{prefix}gold_wins": paired["gold_wins"],
            f"{prefix}gold_ties": paired["n"] - paired["gold_wins"] - paired["gold_losses"],
            f"{prefix}gold_losses": paired["gold_losses"]}


def heldout_metrics(ev: Evaluation, heldout: list[dict]) -> tuple[dict, Compared]:
    """The lab's headline: held-out prompts, greedy answers, the reward model as judge."""
    compared = ev.compare(heldout)
    metrics = compared.win_rate()
    # The same verdicts with the judge's taste for length taken out (AlpacaEval 2's control), in characters: a
    # tokenizer-free length that reads the same for any model.
    metrics.update(win_rates.length_controlled_win_rate([OUTCOME[v] for v in compared.verdicts()],
                                                        [len(a) for a in compared.answers["dpo"]],
                                                        [len(a) for a in compared.answers["sft"]], seed=ev.seed))
    if metrics["lc_extreme_change"]:  # AlpacaEval's guard: the length fit moved the rate implausibly far
        log.warning("length-controlled win rate %.3f is far from the raw one (ties as half) %.3f: the length fit may "
                    "have failed (length coefficient %.2f); read it with care", metrics["lc_win_rate"],
                    metrics["win_rate_ties_half"], metrics["lc_length_coefficient"])
    metrics.update({
        "reward_mean_sft": statistics.fmean(compared.rewards["sft"]),
        "reward_mean_dpo": statistics.fmean(compared.rewards["dpo"]),
        "answer_words_sft": statistics.fmean(len(a.split()) for a in compared.answers["sft"]),
        "answer_words_dpo": statistics.fmean(len(a.split()) for a in compared.answers["dpo"]),
        "identical_share": sum(compared.identical) / len(compared.identical),
    })
    return metrics, compared


def validation_metrics(ev: Evaluation, validation: list[dict]) -> dict:
    """Settings are chosen on these: fresh prompts that no reported figure uses."""
    if not validation:
        return {}
    compared = ev.compare(validation)
    summary = compared.win_rate()
    return {**{f"validation_{k}": summary[k] for k in ("win_rate", "wins", "ties", "losses")},
            **gold_summary(gold_verdicts(validation, compared), "validation_")}


def gold_metrics(ev: Evaluation, gold: list[dict], per_prompt: dict | None = None) -> dict:
    """The honest measure: fresh prompts, the gold checker; and how often the judge sides with it. The verdicts
    per prompt go into `per_prompt["gold"]`."""
    if not gold:
        return {}
    compared = ev.compare(gold)
    correct = gold_verdicts(gold, compared)
    if per_prompt is not None:
        per_prompt["gold"] = {f"correct_{m}": [int(c) for c in correct[m]] for m in POLICIES}
    paired = win_rates.paired_difference(correct["dpo"], correct["sft"])
    prefers = [None if v == "tie" else v == "a" for v in (win_rates.verdict(d, s) for d, s in
                                                          zip(compared.rewards["dpo"], compared.rewards["sft"]))]
    agreement = win_rates.judge_agreement(prefers, correct["dpo"], correct["sft"])
    return {
        "gold_n": paired["n"], "gold_accuracy_sft": paired["accuracy_b"], "gold_accuracy_dpo": paired["accuracy_a"],
        "gold_accuracy_diff": paired["difference"], "gold_accuracy_diff_ci95": paired["difference_ci95"],
        "gold_win_rate": paired["gold_win_rate"], "gold_loss_rate": paired["gold_loss_rate"],
        "judge_gold_agreement": agreement["agreement"], "judge_gold_decisive": agreement["n_decisive"],
    }


def write_samples(heldout: list[dict], compared: Compared) -> None:
    """metrics/samples.csv: each held-out prompt, both answers, their rewards, gold verdicts and the winner."""
    winner = {"a": "dpo", "tie": "tie", "b": "sft"}
    rows = []
    for i, (record, verdict) in enumerate(zip(heldout, compared.verdicts())):
        gold = {m: (is_correct(record, compared.answers[m][i]) if "correct" in record else "") for m in POLICIES}
        rows.append({"prompt": record["prompt"], "sft_answer": compared.answers["sft"][i],
                     "dpo_answer": compared.answers["dpo"][i], "sft_reward": round(compared.rewards["sft"][i], 4),
                     "dpo_reward": round(compared.rewards["dpo"][i], 4), "sft_gold_correct": gold["sft"],
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
    def span(ci) -> str:
        return f"{ci[0]:.2f}-{ci[1]:.2f}"

    fresh = bool(metrics["judge_pairs_fresh"])
    return {"win": round(metrics["win_rate"], 3), "win_ci": span(metrics["win_rate_ci95"]),
            "lc": round(metrics["lc_win_rate"], 3), "lc_ci": span(metrics["lc_win_rate_ci95"]),
            "gold": metrics.get("gold_accuracy_dpo"),
            "judge": round(metrics["judge_accuracy_fresh" if fresh else "judge_accuracy"], 3),
            "kl": round(metrics["kl_dpo_sft"], 3)}


def log_summary(metrics: dict) -> None:
    fresh = bool(metrics["judge_pairs_fresh"])
    which = "judge_accuracy_fresh" if fresh else "judge_accuracy"
    lo, hi = metrics[f"{which}_ci95"]
    judged_by = (f"judge accuracy {metrics[which]:.2f} [{lo:.2f}, {hi:.2f}] on "
                 f"{metrics['judge_pairs_fresh' if fresh else 'judge_pairs']} {'fresh' if fresh else 'held-out'} pairs")
    log.info("win rate %.3f (ties as half %.3f; length-controlled %.3f [%.3f, %.3f], DPO answers %.2fx SFT's "
             "length; %d/%d/%d; %s%s) | gold accuracy sft %s dpo %s | KL %.3f",
             metrics["win_rate"], metrics["win_rate_ties_half"], metrics["lc_win_rate"], *metrics["lc_win_rate_ci95"],
             metrics["length_ratio"], metrics["wins"], metrics["ties"], metrics["losses"],
             judged_by, "" if metrics["win_rate_informative"] else ": UNINFORMATIVE, the judge may be guessing",
             metrics.get("gold_accuracy_sft"), metrics.get("gold_accuracy_dpo"), metrics["kl_dpo_sft"])


def main() -> None:
    params = start_stage("evaluate", __doc__)
    seed, model_cfg, cfg = params["seed"], section(params, "model"), section(params, "evaluate")
    runtime.seed_everything(seed)
    ev = Evaluation(model_cfg, cfg, seed)
    heldout_rows = files.read_jsonl(prepared("heldout"))
    heldout = one_per_prompt(heldout_rows)

    metrics, compared = heldout_metrics(ev, heldout)
    metrics["kl_dpo_sft"] = ev.kl(compared.prompts)  # sampled answers to the same fitted prompts
    # Is the judge worth hearing? Its accuracy on the held-out pairs (the lab's 50) and on fresh pairs no stage
    # trained on (the built-in task makes 500). A win rate from a judge whose interval includes chance is noise.
    judge_pairs = files.read_optional_jsonl(check_set("judge"))
    metrics.update(win_rates.judge_reliability(ev.judge_hits(heldout_rows), ev.judge_hits(judge_pairs)))
    # The DPO policy as its own judge, on the same pairs (RewardBench's score for DPO models)
    for name, hits in (("implicit_reward_accuracy", ev.implicit_reward_hits(heldout_rows)),
                       ("implicit_reward_accuracy_fresh", ev.implicit_reward_hits(judge_pairs))):
        metrics[name] = hits[0] / hits[1] if hits[1] else None
        metrics[f"{name}_ci95"] = list(win_rates.wilson_interval(*hits)) if hits[1] else None
    if all("correct" in r for r in heldout):  # the gold checker's verdict on the same held-out answers
        metrics.update(gold_summary(gold_verdicts(heldout, compared), "heldout_"))
    metrics.update(validation_metrics(ev, files.read_optional_jsonl(check_set("validation"))))
    # Per prompt, what the summaries above count: experiments/compare.py bootstraps over prompts and seeds with it.
    per_prompt = {"heldout": {"outcome": [OUTCOME[v] for v in compared.verdicts()],
                              **{f"length_{m}": [len(a) for a in compared.answers[m]] for m in POLICIES}}}
    metrics.update(gold_metrics(ev, files.read_optional_jsonl(check_set("gold")), per_prompt))
    metrics["prompts_truncated"] = ev.prompts_truncated
    metrics["sequences_truncated"] = ev.encode.truncated
    metrics = {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}

    files.write_json(EVAL_METRICS, metrics)
    files.write_json(HEADLINE, headline(metrics))
    files.write_json(PER_PROMPT, per_prompt)
    write_manifest(metrics)
    write_samples(heldout, compared)
    plots.render_all(metrics, compared.rewards, PLOTS)
    log_summary(metrics)


if __name__ == "__main__":
    with exit_on_user_error("evaluate"):
        main()
