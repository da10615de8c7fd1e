"""evaluate: DPO vs SFT. Greedy answers on the held-out prompts judged by the reward model (the seed's
win rate), greedy answers on the gold prompts judged by the gold checker, a sequence-level KL estimate,
a samples table and PNG plots. Writes metrics/eval.json, metrics/samples.csv and metrics/plots/."""

import csv
import logging
import os
import statistics

import torch
from tqdm import tqdm

from preftune import data, judge, modeling, plots
from preftune.batching import Encoder, collate, length_batches, to_device
from preftune.errors import exit_on_user_error
from preftune.generation import generate_answers
from preftune.logprobs import sequence_logprobs
from preftune.params import section, start_stage
from preftune.formats import is_unpaired
from preftune.paths import DPO, DPO_ADAPTER, REWARD, SFT, check_set, prepared
from preftune.reward_model import evaluate_labels, evaluate_pairs, load_reward_model, score_texts
from preftune.gold import is_correct

log = logging.getLogger("evaluate")


class Policies:
    """The SFT and DPO policies. A LoRA adapter is switched off to get the SFT model back, so one copy
    of the base weights serves both; a fully fine-tuned DPO model is loaded on its own."""

    def __init__(self, device):
        self.sft = modeling.load_causal_lm(SFT).to(device)
        self.lora = os.path.isdir(DPO_ADAPTER)
        if self.lora:
            self.dpo = modeling.load_adapter(self.sft, DPO_ADAPTER).to(device)
        else:
            self.dpo = modeling.load_causal_lm(DPO).to(device)

    def answers(self, which: str, tokenizer, prompts, **kw) -> list[str]:
        if which == "dpo":
            return generate_answers(self.dpo, tokenizer, prompts, desc=f"{which} answers", **kw)
        if self.lora:
            with self.dpo.disable_adapter():
                return generate_answers(self.dpo, tokenizer, prompts, desc=f"{which} answers", **kw)
        return generate_answers(self.sft, tokenizer, prompts, desc=f"{which} answers", **kw)

    @torch.no_grad()
    def kl_estimate(self, tokenizer, prompts, samples: int, max_new_tokens: int, max_length: int, seed: int, device) -> float:
        """Monte Carlo KL(dpo || sft) per sequence: E_{y ~ dpo}[log pi_dpo(y|x) - log pi_sft(y|x)]."""
        repeated = [p for p in prompts for _ in range(samples)]
        answers = self.answers("dpo", tokenizer, repeated, max_new_tokens=max_new_tokens, sample=True, seed=seed,
                               max_length=max_length)
        encode = Encoder(tokenizer, max_length)
        sequences = [encode(p, a) for p, a in zip(repeated, answers)]
        diffs = []
        for idx in tqdm(length_batches(sequences, 64), desc="KL estimate", unit="batch", leave=False, disable=None):
            batch = to_device(collate([sequences[i] for i in idx], tokenizer.pad_token_id), device)
            dpo_lp, _ = sequence_logprobs(self.dpo.eval(), batch)
            if self.lora:
                with self.dpo.disable_adapter():
                    sft_lp, _ = sequence_logprobs(self.dpo, batch)
            else:
                sft_lp, _ = sequence_logprobs(self.sft.eval(), batch)
            diffs += (dpo_lp - sft_lp).tolist()
        return statistics.fmean(diffs)


def judge_hits(reward_model, encode: Encoder, rows: list[dict], device) -> tuple[int, int]:
    """(rows the judge gets right, rows): a pair where it scores chosen strictly above rejected, or an unpaired
    row whose reward has the label's sign (r > 0 for a desirable answer)."""
    if not rows:
        return 0, 0
    pad = encode.tokenizer.pad_token_id
    if is_unpaired(rows):
        stats = evaluate_labels(reward_model, [encode.row(r, "completion") for r in rows], [r["label"] for r in rows],
                                pad, device)
    else:
        stats = evaluate_pairs(reward_model, [(encode.row(r, "chosen"), encode.row(r, "rejected")) for r in rows],
                               pad, device)
    return round(stats["accuracy"] * len(rows)), len(rows)


def one_per_prompt(rows: list[dict]) -> list[dict]:
    """Unpaired feedback often has several rows per prompt (a good and a bad answer): generate once per prompt.
    Pairs keep one record per row, as the seed counts its 50 held-out prompts."""
    if not is_unpaired(rows):
        return rows
    return list({r["prompt"]: r for r in reversed(rows)}.values())[::-1]


def fit_prompts(encode: Encoder, prompts: list[str], max_new_tokens: int) -> tuple[list[str], int]:
    """Prompts cut (from the left, as prepare cuts them) so that prompt + answer + EOS fit max_length; the same
    text is then generated from and scored. Returns the prompts and how many were cut."""
    keep = max(encode.max_length - max_new_tokens - 1, 1)
    fitted = [encode.tail(p, keep) for p in prompts]
    return fitted, sum(f != p for f, p in zip(fitted, prompts))


def main() -> None:
    params = start_stage(__doc__)
    seed, model_cfg, cfg = params["seed"], section(params, "model"), section(params, "evaluate")
    modeling.seed_everything(seed)
    device = modeling.resolve_device(model_cfg["device"])
    tokenizer = modeling.load_tokenizer(SFT)
    policies = Policies(device)
    reward_model = load_reward_model(REWARD).to(device)
    encode = Encoder(tokenizer, model_cfg["max_length"])
    truncation = {"prompts_truncated": 0}
    gen = {"max_new_tokens": cfg["max_new_tokens"], "batch_size": cfg["batch_size"], "max_length": model_cfg["max_length"]}

    def compare(prompts: list[str]):
        """Greedy answers of both policies and the judge's rewards for them. Prompts are fitted first (counted):
        prompt + answer then fit max_length as in training, and what is scored is what was generated from."""
        prompts, cut = fit_prompts(encode, prompts, cfg["max_new_tokens"])
        truncation["prompts_truncated"] += cut
        with modeling.autocast(device, cfg["precision"]):
            answers = {m: policies.answers(m, tokenizer, prompts, **gen) for m in ("sft", "dpo")}
            rewards = {m: score_texts(reward_model, encode, prompts, answers[m], device, desc=f"score {m} answers")
                       for m in ("sft", "dpo")}
        return answers, rewards, [a == b for a, b in zip(answers["dpo"], answers["sft"])]

    def gold_outcomes(records: list[dict], answers: dict, prefix: str):
        """The gold checker's verdicts per policy, their paired comparison, and as metrics: both gold accuracies
        and the gold win/tie/loss, named <prefix>gold_*."""
        correct = {m: [is_correct(r, a) for r, a in zip(records, answers[m])] for m in ("sft", "dpo")}
        paired = judge.paired_difference(correct["dpo"], correct["sft"])
        wins, losses = round(paired["gold_win_rate"] * paired["n"]), round(paired["gold_loss_rate"] * paired["n"])
        return correct, paired, {f"{prefix}gold_accuracy_sft": paired["accuracy_b"],
                         f"{prefix}gold_accuracy_dpo": paired["accuracy_a"],
                         f"{prefix}gold_wins": wins, f"{prefix}gold_ties": paired["n"] - wins - losses,
                         f"{prefix}gold_losses": losses}

    # The seed's headline: held-out prompts, greedy answers, the reward model as judge.
    heldout_rows = data.read_jsonl(prepared("heldout"))
    heldout = one_per_prompt(heldout_rows)
    prompts = [r["prompt"] for r in heldout]
    answers, rewards, identical = compare(prompts)
    metrics = judge.win_rate_summary(rewards["dpo"], rewards["sft"], identical=identical)
    metrics.update({
        "reward_mean_sft": statistics.fmean(rewards["sft"]), "reward_mean_dpo": statistics.fmean(rewards["dpo"]),
        "answer_words_sft": statistics.fmean(len(a.split()) for a in answers["sft"]),
        "answer_words_dpo": statistics.fmean(len(a.split()) for a in answers["dpo"]),
        "identical_share": sum(identical) / len(identical),
    })
    with modeling.autocast(device, cfg["precision"]):
        metrics["kl_dpo_sft"] = policies.kl_estimate(tokenizer, fit_prompts(encode, prompts, cfg["max_new_tokens"])[0],
                                                     cfg["kl_samples"], cfg["max_new_tokens"], model_cfg["max_length"],
                                                     seed, device)
    # Is the judge worth hearing? Its accuracy on the held-out pairs (the seed's 50) and on fresh pairs no stage
    # trained on (the built-in task makes 500). A win rate from a judge whose interval includes chance is noise.
    with modeling.autocast(device, cfg["precision"]):
        reliability = judge.judge_reliability(*(judge_hits(reward_model, encode, rows, device)
                                                for rows in (heldout_rows, data.read_optional_jsonl(check_set("judge")))))
    metrics.update(reliability)
    if all("correct" in r for r in heldout):  # the gold checker's verdict on the same 50 prompts
        metrics.update(gold_outcomes(heldout, answers, "heldout_")[2])

    # Settings are chosen on these: fresh prompts that no reported figure uses.
    validation = data.read_optional_jsonl(check_set("validation"))
    if validation:
        v_answers, v_rewards, v_identical = compare([r["prompt"] for r in validation])
        summary = judge.win_rate_summary(v_rewards["dpo"], v_rewards["sft"], identical=v_identical)
        metrics.update({f"validation_{k}": summary[k] for k in ("win_rate", "wins", "ties", "losses")})
        metrics.update(gold_outcomes(validation, v_answers, "validation_")[2])

    # The honest measure: fresh prompts, the gold checker.
    gold = data.read_optional_jsonl(check_set("gold"))
    if gold:
        gold_prompts = [r["prompt"] for r in gold]
        gold_answers, gold_rewards, _ = compare(gold_prompts)
        correct, paired, _ = gold_outcomes(gold, gold_answers, "")
        prefers = [None if d == s else d > s for d, s in zip(gold_rewards["dpo"], gold_rewards["sft"])]
        agreement = judge.judge_agreement(prefers, correct["dpo"], correct["sft"])
        metrics.update({
            "gold_n": paired["n"], "gold_accuracy_sft": paired["accuracy_b"], "gold_accuracy_dpo": paired["accuracy_a"],
            "gold_accuracy_diff": paired["difference"], "gold_accuracy_diff_ci95": paired["difference_ci95"],
            "gold_win_rate": paired["gold_win_rate"], "gold_loss_rate": paired["gold_loss_rate"],
            "judge_gold_agreement": agreement["agreement"], "judge_gold_decisive": agreement["n_decisive"],
        })
    metrics["prompts_truncated"] = truncation["prompts_truncated"]
    metrics["sequences_truncated"] = encode.truncated
    metrics = {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}
    data.write_json("metrics/eval.json", metrics)
    # The seed's run manifest: what was trained (models/dpo/manifest.json) and how it did.
    trained = data.read_json(f"{DPO}/manifest.json")
    data.write_json("metrics/manifest.json", {
        **{k: trained[k] for k in ("seed", "beta", "lr", "epochs", "loss", "batch_size", "effective_batch_size")},
        **{k: metrics.get(k) for k in ("win_rate", "win_rate_ci95", "wins", "ties", "losses", "win_rate_informative",
                                       "judge_accuracy", "judge_accuracy_fresh", "gold_accuracy_sft",
                                       "gold_accuracy_dpo")}})

    rows = []
    for i, record in enumerate(heldout):
        verdict = {m: (is_correct(record, answers[m][i]) if "correct" in record else "") for m in ("sft", "dpo")}
        winner = "tie" if identical[i] or rewards["dpo"][i] == rewards["sft"][i] else \
            ("dpo" if rewards["dpo"][i] > rewards["sft"][i] else "sft")
        rows.append({"prompt": record["prompt"], "sft_answer": answers["sft"][i], "dpo_answer": answers["dpo"][i],
                     "sft_reward": round(rewards["sft"][i], 4), "dpo_reward": round(rewards["dpo"][i], 4),
                     "sft_gold_correct": verdict["sft"], "dpo_gold_correct": verdict["dpo"], "winner": winner})
    with data.atomic_open("metrics/samples.csv") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    plots.render_all(metrics, rewards, "metrics/plots")
    fresh = bool(reliability["judge_pairs_fresh"])
    accuracy, (lo, hi) = (reliability["judge_accuracy_fresh"], reliability["judge_accuracy_fresh_ci95"]) if fresh \
        else (reliability["judge_accuracy"], reliability["judge_accuracy_ci95"])
    judged_by = (f"judge accuracy {accuracy:.2f} [{lo:.2f}, {hi:.2f}] on "
                 f"{reliability['judge_pairs_fresh' if fresh else 'judge_pairs']} {'fresh' if fresh else 'held-out'} pairs")
    log.info("win rate %.3f (ties as half %.3f; %d/%d/%d; %s%s) | gold accuracy sft %s dpo %s | KL %.3f",
             metrics["win_rate"], metrics["win_rate_ties_half"], metrics["wins"], metrics["ties"], metrics["losses"],
             judged_by, "" if metrics["win_rate_informative"] else ": UNINFORMATIVE, the judge may be guessing",
             metrics.get("gold_accuracy_sft"), metrics.get("gold_accuracy_dpo"), metrics["kl_dpo_sft"])


if __name__ == "__main__":
    with exit_on_user_error("evaluate"):
        main()
