"""On-policy rounds (iterative DPO): what a round trains with, its seed, and the pairs it forms from its samples.

A round (params.yaml online.rounds.<name>) samples online.samples answers per training prompt from the policy it
starts from, has them scored (by the reward model or, on the built-in task, the gold checker), pairs the best
answer against the worst, and trains DPO from that policy on those pairs. Only the online stage and the round's
evaluation import this module."""

from __future__ import annotations

import zlib

from ..pipeline.errors import ConfigError
from ..pipeline.params import Section, section


def round_spec(params: dict, name: str) -> tuple[str, Section]:
    """(the policy the round starts from: dpo or an earlier round, the round's dpo settings: params.yaml's dpo
    section with the round's own keys in place)."""
    rounds = section(params, "online")["rounds"]
    if name not in rounds:
        raise ConfigError(f"params.yaml: online.rounds has no round {name!r} (it has {', '.join(rounds) or 'none'}); "
                          "dvc.yaml runs the rounds online.rounds lists")
    spec = dict(rounds[name])
    start = spec.pop("from")
    return start, Section(f"online.rounds.{name}", {**section(params, "dpo"), **spec})


def round_seed(seed: int, name: str) -> int:
    """The round's sampling seed: the run's seed and the round's name, so that every round draws differently and a
    rerun of a round draws the same answers."""
    return seed + zlib.crc32(name.encode()) % 1_000_003


def best_and_worst(scores: list[float], answers: list[str]) -> tuple[int, int] | None:
    """The indices of one prompt's best- and worst-scored answers (the first of equal scores), or None when they
    cannot make a pair: every score equal (a tie), or the two answers the same text."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    if scores[best] == scores[worst] or answers[best] == answers[worst]:
        return None
    return best, worst


def form_pairs(records: list[dict], answers: list[list[str]], scores: list[list[float]],
               finished: list[list[bool]]) -> tuple[list[dict], dict]:
    """Preference rows (prompt, chosen, rejected; *_cut where an answer ran out of tokens, so that no EOS is added)
    from each prompt's scored samples, and the counts: prompts, pairs formed, groups dropped as ties, and the mean
    score of chosen and rejected answers."""
    rows, ties = [], 0
    for record, group, group_scores, group_finished in zip(records, answers, scores, finished):
        found = best_and_worst(group_scores, group)
        if found is None:
            ties += 1
            continue
        b, w = found
        rows.append({"prompt": record["prompt"], "chosen": group[b], "rejected": group[w],
                     "chosen_cut": not group_finished[b], "rejected_cut": not group_finished[w],
                     "chosen_score": group_scores[b], "rejected_score": group_scores[w]})
    n = len(rows)
    counts = {"prompts": len(records), "pairs": n, "ties_dropped": ties,
              "score_chosen_mean": sum(r["chosen_score"] for r in rows) / n if n else None,
              "score_rejected_mean": sum(r["rejected_score"] for r in rows) / n if n else None}
    return rows, counts


def reward_hacking(before: dict, after: dict) -> bool | None:
    """A round that raised the judge's win rate (against SFT) while gold accuracy fell: the policy learnt what the
    judge likes, not the task. None without a gold checker. `before`/`after`: win_rate and gold_accuracy."""
    if before.get("gold_accuracy") is None or after.get("gold_accuracy") is None:
        return None
    return after["win_rate"] > before["win_rate"] and after["gold_accuracy"] < before["gold_accuracy"]
