"""Small pure-python statistics for the evaluate stage: win rates with intervals (strict, ties as half, and
length-controlled), paired gold accuracy, and how often the judge agrees with the gold checker. No torch; inputs are plain lists."""

from __future__ import annotations

import math
import random
from typing import Sequence


def _check_lengths(**seqs: Sequence) -> int:
    lengths = {name: len(s) for name, s in seqs.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("no prompts to compare (all inputs are empty)")
    return n


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion successes / n (z = 1.96: 95%). n = 0 gives (0.0, 1.0)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def verdict(score_a: float, score_b: float, identical: bool = False) -> str:
    """The one win/tie rule: "a" when A's score is strictly higher, "tie" when the scores are equal or the answers
    identical (identical answers are ties whatever their scores), else "b"."""
    if identical or score_a == score_b:
        return "tie"
    return "a" if score_a > score_b else "b"


def win_rate_summary(scores_a: Sequence[float], scores_b: Sequence[float],
                     identical: Sequence[bool] | None = None) -> dict:
    """Judged comparison of model A (e.g. DPO) against model B (e.g. SFT), one score each per prompt.

    A prompt is a win when score_a > score_b strictly, a tie when the scores are equal or identical[i] is true
    (identical answers are ties whatever their scores), else a loss. Returns wins, ties, losses, n,
    win_rate = wins / n (strict, as the lab counts), win_rate_ties_half = (wins + ties / 2) / n (AlpacaEval,
    FastChat), and win_rate_ci95 = [lo, hi], the Wilson interval of the strict win rate.
    """
    if identical is None:
        identical = [False] * len(scores_a)
    n = _check_lengths(scores_a=scores_a, scores_b=scores_b, identical=identical)
    verdicts = [verdict(a, b, same) for a, b, same in zip(scores_a, scores_b, identical)]
    wins, ties, losses = (verdicts.count(v) for v in ("a", "tie", "b"))
    lo, hi = wilson_interval(wins, n)
    return {
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "n": n,
        "win_rate": wins / n,
        "win_rate_ties_half": (wins + ties / 2) / n,
        "win_rate_ci95": [lo, hi],
    }


def paired_difference(correct_a: Sequence[bool | int], correct_b: Sequence[bool | int], z: float = 1.96) -> dict:
    """Gold accuracy of A and B on the same prompts (0/1 outcomes), and their difference with a 95% interval.

    The interval is the normal approximation for the mean of the paired differences d_i = a_i - b_i:
    mean(d) +- z * sd(d) / sqrt(n), sd with n - 1 in the denominator, clipped to [-1, 1]; with n < 2 it is
    [-1, 1] (no spread to estimate). Pairing removes the prompts both get right or both get wrong, so this is
    much tighter than comparing two independent rates. gold_win_rate is the share of prompts where A is correct
    and B wrong; gold_loss_rate the reverse (difference = gold_win_rate - gold_loss_rate).
    """
    n = _check_lengths(correct_a=correct_a, correct_b=correct_b)
    a = [int(bool(x)) for x in correct_a]
    b = [int(bool(x)) for x in correct_b]
    d = [x - y for x, y in zip(a, b)]
    mean_d = sum(d) / n
    if n < 2:
        lo, hi = -1.0, 1.0
    else:
        var = sum((x - mean_d) ** 2 for x in d) / (n - 1)
        half = z * math.sqrt(var / n)
        lo, hi = max(-1.0, mean_d - half), min(1.0, mean_d + half)
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    return {
        "n": n,
        "accuracy_a": sum(a) / n,
        "accuracy_b": sum(b) / n,
        "difference": mean_d,
        "difference_ci95": [lo, hi],
        "gold_win_rate": a_only / n,
        "gold_loss_rate": b_only / n,
        "gold_wins": a_only,  # prompts where only A is correct
        "gold_losses": b_only,
    }


def judge_agreement(judge_prefers_a: Sequence[bool | None], gold_a: Sequence[bool],
                    gold_b: Sequence[bool]) -> dict:
    """How often the judge picks the gold-correct answer, on the decisive prompts: those where exactly one of
    the two answers is gold-correct. judge_prefers_a[i] is True (A preferred), False (B preferred) or None (tie:
    no preference, counted as not agreeing). Returns agreement (None when there is no decisive prompt),
    n_decisive, and judge_ties (decisive prompts the judge called a tie)."""
    _check_lengths(judge_prefers_a=judge_prefers_a, gold_a=gold_a, gold_b=gold_b)
    n_decisive = agree = judge_ties = 0
    for pref, ga, gb in zip(judge_prefers_a, gold_a, gold_b):
        if bool(ga) == bool(gb):
            continue
        n_decisive += 1
        if pref is None:
            judge_ties += 1
        elif bool(pref) == bool(ga):
            agree += 1
    return {
        "agreement": agree / n_decisive if n_decisive else None,
        "n_decisive": n_decisive,
        "judge_ties": judge_ties,
    }


def _fit_logistic(x: list[float], y: list[float], iterations: int = 50) -> tuple[float, float]:
    """(intercept, slope) maximising sum y log p + (1 - y) log(1 - p), p = sigmoid(a + b x), y in [0, 1] (ties as
    0.5): Newton's method on the two parameters, with a small ridge so that separable data stays finite."""
    a = b = 0.0
    ridge = 1e-6 * len(x)
    for _ in range(iterations):
        ga = gb = haa = hab = hbb = 0.0
        for xi, yi in zip(x, y):
            p = 1.0 / (1.0 + math.exp(-(a + b * xi)))
            w = p * (1.0 - p)
            ga += yi - p
            gb += (yi - p) * xi
            haa += w
            hab += w * xi
            hbb += w * xi * xi
        ga, gb, haa, hbb = ga - ridge * a, gb - ridge * b, haa + ridge, hbb + ridge
        det = haa * hbb - hab * hab
        if det <= 0:
            break
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        a, b = a + da, b + db
        if abs(da) + abs(db) < 1e-10:
            break
    return a, b


def length_controlled_rate(outcomes: Sequence[float], length_diffs: Sequence[float]) -> float:
    """sigmoid(theta) of the fit P(A wins) = sigmoid(theta + phi * tanh(d / sd(d))), d = A's length - B's, ties
    as 0.5: the rate read at zero length difference."""
    n = len(length_diffs)
    mean = sum(length_diffs) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in length_diffs) / n) or 1.0
    theta, _ = _fit_logistic([math.tanh(v / sd) for v in length_diffs], list(outcomes))
    return 1.0 / (1.0 + math.exp(-theta))


def length_controlled_win_rate(outcomes: Sequence[float], length_a: Sequence[int], length_b: Sequence[int],
                               resamples: int = 1000, seed: int = 0) -> dict:
    """AlpacaEval 2's length-controlled win rate of A against B, without its per-instruction term.

    outcomes[i] is 1 (A won), 0.5 (tie) or 0 (B won). Fit P(A wins) = sigmoid(theta + phi * tanh(d_i / sd(d))),
    d_i = length_a[i] - length_b[i], and read it at zero length difference: sigmoid(theta). What a judge gives
    for being longer goes into phi; what is left is the preference between answers of equal length. The 95%
    interval is a percentile bootstrap over prompts (`resamples` draws, seeded)."""
    n = _check_lengths(outcomes=outcomes, length_a=length_a, length_b=length_b)
    d = [a - b for a, b in zip(length_a, length_b)]
    rng = random.Random(seed)
    draws = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        draws.append(length_controlled_rate([outcomes[i] for i in idx], [d[i] for i in idx]))
    draws.sort()
    mean = sum(d) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / n) or 1.0
    _, phi = _fit_logistic([math.tanh(v / sd) for v in d], list(outcomes))
    return {"lc_win_rate": length_controlled_rate(outcomes, d),
            "lc_win_rate_ci95": [draws[int(0.025 * resamples)], draws[int(0.975 * resamples) - 1]],
            "lc_length_coefficient": phi,
            "length_ratio": sum(length_a) / max(1, sum(length_b))}


def judge_reliability(heldout: tuple[int, int], fresh: tuple[int, int] = (0, 0)) -> dict:
    """Is a win rate from this judge worth anything? Its accuracy (correct, n) on held-out preference pairs and on
    fresh pairs no stage trained on, each with a 95% Wilson interval. The win rate is informative only when the
    interval of the larger sample (fresh pairs when there are any) lies above chance (0.5): a judge that may be
    guessing turns any policy change into a "win rate"."""
    out = {}
    for name, (correct, n) in (("judge_accuracy", heldout), ("judge_accuracy_fresh", fresh)):
        out[name] = correct / n if n else None
        out[f"{name}_ci95"] = list(wilson_interval(correct, n)) if n else None
        out[name.replace("accuracy", "pairs")] = n
    evidence = out["judge_accuracy_fresh_ci95"] if fresh[1] else out["judge_accuracy_ci95"]
    out["win_rate_informative"] = evidence is not None and evidence[0] > 0.5
    return out
