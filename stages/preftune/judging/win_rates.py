"""Small statistics for the evaluate stage: win rates with intervals (strict, ties as half, and length-controlled),
paired gold accuracy, and how often the judge agrees with the gold checker. No torch; inputs are plain lists. The
length-controlled rate fits a logistic regression with scikit-learn (imported only there)."""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

from .verdicts import verdict


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
    _check_lengths(scores_a=scores_a, scores_b=scores_b, identical=identical)
    return verdict_summary([verdict(a, b, same) for a, b, same in zip(scores_a, scores_b, identical)])


def verdict_summary(verdicts: Sequence[str]) -> dict:
    """wins, ties, losses, n and the win rates of A from one verdict per prompt ("a", "tie" or "b"), as
    win_rate_summary counts them: a judge that gives verdicts rather than scores (a judge LLM) is counted alike."""
    n = _check_lengths(verdicts=verdicts)
    wins, ties, losses = (list(verdicts).count(v) for v in ("a", "tie", "b"))
    if wins + ties + losses != n:
        raise ValueError(f"verdicts must be 'a', 'tie' or 'b'; got {sorted(set(verdicts) - {'a', 'tie', 'b'})}")
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


# --- length-controlled win rate (AlpacaEval 2's GLM, without its per-instruction and gamed-baseline terms) -------

LC_CS = np.logspace(-4, 4, 10)  # the grid of C that LogisticRegressionCV searches by default (Cs=10)
LC_FOLDS = 5  # AlpacaEval's n_splits
LC_RANDOM_STATE = 123  # AlpacaEval's random_state for liblinear
LC_RESELECT_RESAMPLES = 200  # bootstrap draws when each must choose its own C (about 50 fits a draw)


def _lc_design(length_diffs: Sequence[float]) -> np.ndarray:
    """The design matrix [1, tanh(d / sd(d))], sd with n - 1 in the denominator and d not centred (AlpacaEval divides
    by pandas' std and nothing else). With fewer than two prompts, or all d equal, the length column is 0: a length
    effect cannot be told apart from the constant, and the whole preference is read as theta."""
    d = np.asarray(length_diffs, dtype=float)
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    return np.column_stack([np.ones_like(x), x])


def _soft_rows(X: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Soft labels as AlpacaEval fits them: every prompt twice, once with y = 1 weighted p and once with y = 0
    weighted 1 - p (a tie, p = 0.5, is half a win and half a loss). Returns X, y, weights and the prompt of each
    row (the group that keeps both copies in one cross-validation fold)."""
    n = len(p)
    return (np.vstack([X, X]), np.r_[np.ones(n), np.zeros(n)], np.r_[p, 1.0 - p], np.r_[np.arange(n), np.arange(n)])


def _l1_logistic(X: np.ndarray, y: np.ndarray, w: np.ndarray, C: float) -> np.ndarray:
    """The coefficients (theta, phi) of an L1-penalised logistic regression without a separate intercept (the
    constant column is penalised like the slope), liblinear, random_state 123: AlpacaEval's settings. liblinear
    minimises |theta| + |phi| + C * sum_i w_i * logloss_i. Its ConvergenceWarning (separable data at a large C) is
    silenced: the coefficients it stops at are still the fit the cross-validation scored."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", fit_intercept=False,
                               random_state=LC_RANDOM_STATE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y, sample_weight=np.maximum(w, 1e-12))  # liblinear warns on stderr of a class weighing 0
    return model.coef_[0]


def _fast_sklearn():
    """scikit-learn without its per-call input validation (public config, scikit-learn >= 1.3): the inputs built
    here are finite float arrays, and the bootstrap calls liblinear thousands of times."""
    import sklearn

    return sklearn.config_context(assume_finite=True, skip_parameter_validation=True)


def _sigmoid(z: float | np.ndarray):
    return np.exp(-np.logaddexp(0.0, -z))


def length_controlled_penalty(outcomes: Sequence[float], length_diffs: Sequence[float]) -> float:
    """The C of the length-controlled fit, chosen as LogisticRegressionCV would: each C of LC_CS is scored by the
    log loss against the soft labels (ties 0.5) on held-out prompts, 5-fold GroupKFold with the two copies of a
    prompt in the same fold, averaged over the folds; the smallest loss wins (the smaller C on a tie). With fewer
    than 5 prompts there are as many folds as prompts (leave one out); with one prompt there is nothing to hold out
    and C is 1.0, scikit-learn's default. A C at which a training fold's fit is exactly zero (C * max_j |sum_i
    (p_i - 0.5) x_ij| <= 1, the L1 optimality condition at zero) is scored without calling liblinear."""
    from sklearn.model_selection import GroupKFold

    p = np.asarray(outcomes, dtype=float)
    n = len(p)
    if n < 2:
        return 1.0
    X, y, w, groups = _soft_rows(_lc_design(length_diffs), p)
    folds = list(GroupKFold(n_splits=min(LC_FOLDS, n)).split(X, y, groups))
    # the gradient of the weighted log-likelihood at zero, per training fold: the largest C with a null fit
    null_c = [1.0 / max(np.abs(X[train].T @ (w[train] * (y[train] - 0.5))).max(), 1e-300) for train, _ in folds]
    losses = []
    for C in LC_CS:
        fold_losses = []
        for (train, test), c0 in zip(folds, null_c):
            coef = np.zeros(2) if C <= c0 else _l1_logistic(X[train], y[train], w[train], C)
            q = np.clip(_sigmoid(X[test] @ coef), 1e-15, 1 - 1e-15)
            target = p[groups[test]]  # both copies of a held-out prompt are scored against its soft label
            fold_losses.append(-np.mean(target * np.log(q) + (1 - target) * np.log(1 - q)))
        losses.append(np.mean(fold_losses))
    return float(LC_CS[int(np.argmin(losses))])


def _lc_coefficients(outcomes: Sequence[float], length_diffs: Sequence[float], C: float) -> tuple[float, float]:
    X, y, w, _ = _soft_rows(_lc_design(length_diffs), np.asarray(outcomes, dtype=float))
    theta, phi = _l1_logistic(X, y, w, C)
    return float(theta), float(phi)


def length_controlled_rate(outcomes: Sequence[float], length_diffs: Sequence[float], C: float | None = None) -> float:
    """sigmoid(theta) of the fit P(A wins) = sigmoid(theta + phi * tanh(d / sd(d))), d = A's length - B's, outcomes
    1 / 0.5 (tie) / 0: the rate read at zero length difference. C is liblinear's inverse L1 strength (per prompt the
    penalty is 1 / (C n)); None chooses it by cross-validation (length_controlled_penalty), which costs 50 fits, so
    a caller that fits many resamples of the same data passes the C it chose once."""
    _check_lengths(outcomes=outcomes, length_diffs=length_diffs)
    with _fast_sklearn():
        if C is None:
            C = length_controlled_penalty(outcomes, length_diffs)
        theta, _ = _lc_coefficients(outcomes, length_diffs, C)
    return float(_sigmoid(theta))


def is_extreme_change(raw: float, controlled: float, abs_diff: float = 10, rel_diff: float = 4) -> bool:
    """AlpacaEval's guard (get_is_extreme_changes), rates on the 0-100 scale: the controlled rate is suspect when
    it falls below min(raw - raw / rel_diff, raw - abs_diff) or rises above max(raw + (100 - raw) / rel_diff,
    raw + abs_diff). E.g. from a raw 50 anything outside [37.5, 62.5]."""
    too_small = controlled < min(raw - raw / rel_diff, raw - abs_diff)
    too_large = controlled > max(raw + (100 - raw) / rel_diff, raw + abs_diff)
    return bool(too_small or too_large)


def length_controlled_win_rate(outcomes: Sequence[float], length_a: Sequence[int], length_b: Sequence[int],
                               resamples: int = 1000, seed: int = 0) -> dict:
    """AlpacaEval 2's length-controlled win rate of A against B, fitted as its glm_winrate.py fits it, without its
    per-instruction difficulty term and its "gamed baseline" rows (we have neither).

    outcomes[i] is 1 (A won), 0.5 (tie) or 0 (B won). The model: P(A wins) = sigmoid(theta + phi * tanh(d_i / sd)),
    d_i = length_a[i] - length_b[i] in characters, sd = std(d) with n - 1, d not centred. theta is the coefficient
    of a constant column, L1-penalised like phi (no free intercept); a soft outcome p is two weighted rows (y = 1
    with weight p, y = 0 with weight 1 - p); liblinear, random_state 123; C chosen by 5-fold GroupKFold
    cross-validation on the log loss over np.logspace(-4, 4, 10) (length_controlled_penalty). Read at zero length
    difference: lc_win_rate = sigmoid(theta). What the judge gives for length goes into phi
    (lc_length_coefficient). The penalty pulls both to 0 unless held-out prompts show that they predict, so where
    the lengths cannot tell theta from phi (A's answers nearly always longer) the fit usually keeps the simpler
    account instead of extrapolating to a length difference no prompt has; when the cross-validation does pick a
    weak penalty it still extrapolates, and lc_extreme_change says so.

    lc_win_rate_ci95: a percentile bootstrap over prompts, seeded. To keep it cheap, C is chosen once, on all
    prompts (lc_penalty_c), and each of `resamples` draws is refitted at that C (sd recomputed on the draw). One
    exception: when that fit is the null one (theta = phi = 0, so lc_win_rate is 0.5 because nothing was worth
    fitting), every draw at the same C would be null as well and the interval would have zero width; then each
    draw chooses its own C by the same cross-validation, at about 50 fits a draw, and there are at most
    LC_RESELECT_RESAMPLES (200) draws. The interval is widened to hold the point where the percentiles miss it
    (the penalty can leave the point at an edge of the draws).

    lc_extreme_change is AlpacaEval's guard (is_extreme_change: a move of more than 10 points and more than a
    quarter of the way towards 0 or 100) comparing lc_win_rate with the raw win rate with ties as half: true when
    the fit moved the rate implausibly far, a sign that it failed. length_ratio is A's characters over B's."""
    n = _check_lengths(outcomes=outcomes, length_a=length_a, length_b=length_b)
    if resamples < 1:
        raise ValueError(f"resamples must be 1 or more, got {resamples}")
    p = np.asarray(outcomes, dtype=float)
    d = np.asarray(length_a, dtype=float) - np.asarray(length_b, dtype=float)
    with _fast_sklearn():
        C = length_controlled_penalty(p, d)
        theta, phi = _lc_coefficients(p, d, C)
        reselect = theta == 0 and phi == 0  # the null fit: at this C every resample would be null too
        if reselect:
            resamples = min(resamples, LC_RESELECT_RESAMPLES)
        draws = []
        for idx in np.random.default_rng(seed).integers(0, n, size=(resamples, n)):
            c = length_controlled_penalty(p[idx], d[idx]) if reselect else C
            draws.append(float(_sigmoid(_lc_coefficients(p[idx], d[idx], c)[0])))
    draws.sort()
    lc = float(_sigmoid(theta))
    lo, hi = draws[int(0.025 * resamples)], max(draws[int(0.975 * resamples) - 1], draws[0])
    if n < 2:  # one prompt: no resample differs from it, and nothing is known
        lo, hi = 0.0, 1.0
    raw = float(p.mean())
    return {"lc_win_rate": lc,
            "lc_win_rate_ci95": [min(lo, lc), max(hi, lc)],
            "lc_length_coefficient": phi,
            "lc_penalty_c": C,
            "lc_extreme_change": is_extreme_change(100 * raw, 100 * lc),
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
