"""Evaluate-stage statistics against hand-computed values."""

import math
import random

import pytest

from preftune.judging import win_rates
from preftune.judging.verdicts import verdict
from preftune.judging.win_rates import (judge_agreement, length_controlled_win_rate, paired_difference, wilson_interval,
                                        win_rate_summary)


def test_wilson_interval_hand_values():
    # 7 of 10, z = 1.96: centre = (0.7 + 0.19208) / 1.38416; half = 1.96/1.38416 * sqrt(0.021 + 0.009604)
    z2 = 1.96 ** 2
    centre = (0.7 + z2 / 20) / (1 + z2 / 10)
    half = 1.96 / (1 + z2 / 10) * math.sqrt(0.7 * 0.3 / 10 + z2 / 400)
    lo, hi = wilson_interval(7, 10)
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (lo, hi) == pytest.approx((0.39677, 0.89222), abs=1e-5)


def test_wilson_interval_edges():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27754, abs=1e-5)  # z^2/(n + z^2)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.27754, abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_win_rate_summary():
    a = [0.9, 0.2, 0.5, 0.7, 0.1]
    b = [0.3, 0.4, 0.5, 0.7, 0.0]
    s = win_rate_summary(a, b)
    assert (s["wins"], s["ties"], s["losses"], s["n"]) == (2, 2, 1, 5)
    assert s["win_rate"] == 0.4
    assert s["win_rate_ties_half"] == 0.6
    assert s["win_rate_ci95"] == pytest.approx(list(wilson_interval(2, 5)))


def test_identical_answers_are_ties_whatever_the_scores():
    a = [0.9, 0.2, 0.5, 0.7, 0.1]
    b = [0.3, 0.4, 0.5, 0.7, 0.0]
    s = win_rate_summary(a, b, identical=[True, True, False, False, False])
    assert (s["wins"], s["ties"], s["losses"]) == (1, 4, 0)
    assert s["win_rate"] == 0.2
    assert s["win_rate_ties_half"] == pytest.approx(0.6)


def test_win_rate_summary_length_mismatch():
    with pytest.raises(ValueError):
        win_rate_summary([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        win_rate_summary([], [])


def test_paired_difference():
    a = [1, 1, 1, 0, 1, 0, 1, 1]
    b = [1, 0, 0, 0, 1, 1, 0, 1]
    # d = 0, 1, 1, 0, 0, -1, 1, 0 -> mean 2/8 = 0.25; sum d^2 = 4; var = (4 - 8 * 0.0625) / 7 = 0.5
    r = paired_difference(a, b)
    assert r["n"] == 8
    assert r["accuracy_a"] == 0.75
    assert r["accuracy_b"] == 0.5
    assert r["difference"] == 0.25
    half = 1.96 * math.sqrt(0.5 / 8)  # 0.49
    assert r["difference_ci95"] == pytest.approx([0.25 - half, 0.25 + half], abs=1e-12)
    assert r["difference_ci95"] == pytest.approx([-0.24, 0.74], abs=1e-12)
    assert r["gold_win_rate"] == 3 / 8
    assert r["gold_loss_rate"] == 1 / 8


def test_paired_difference_bools_clipping_and_single_prompt():
    r = paired_difference([True] * 4, [False] * 4)
    assert r["difference"] == 1.0 and r["difference_ci95"] == [1.0, 1.0]
    assert r["gold_win_rate"] == 1.0 and r["gold_loss_rate"] == 0.0
    assert paired_difference([1], [0])["difference_ci95"] == [-1.0, 1.0]


def test_judge_agreement():
    gold_a = [True, True, False, False, True, False]
    gold_b = [False, True, True, False, False, True]
    prefers_a = [True, False, False, True, False, None]
    # decisive: 0 (A right, judge A: agree), 2 (B right, judge B: agree), 4 (A right, judge B: no),
    # 5 (B right, judge tie: no)
    r = judge_agreement(prefers_a, gold_a, gold_b)
    assert r["n_decisive"] == 4
    assert r["agreement"] == 0.5
    assert r["judge_ties"] == 1


def test_judge_agreement_without_decisive_prompts():
    r = judge_agreement([True, None], [True, False], [True, False])
    assert r == {"agreement": None, "n_decisive": 0, "judge_ties": 0}


@pytest.mark.parametrize("heldout, fresh, informative", [
    ((29, 50), (0, 0), False),     # 0.58 on the lab's 50 pairs: [0.44, 0.71] includes chance
    ((45, 50), (0, 0), True),      # 0.90: [0.79, 0.96]
    ((29, 50), (450, 500), True),  # the fresh pairs, when there are any, decide: 0.90 on 500
    ((45, 50), (260, 500), False),  # 0.52 on 500 fresh pairs: [0.48, 0.56]; the lucky 50 do not overrule it
])
def test_judge_reliability_flags_a_judge_that_may_be_guessing(heldout, fresh, informative):
    out = win_rates.judge_reliability(heldout, fresh)
    assert out["win_rate_informative"] is informative
    assert out["judge_accuracy"] == heldout[0] / heldout[1] and out["judge_pairs"] == heldout[1]
    lo, hi = out["judge_accuracy_ci95"]
    assert lo < out["judge_accuracy"] < hi
    if fresh[1]:
        assert out["judge_accuracy_fresh"] == fresh[0] / fresh[1] and out["judge_pairs_fresh"] == fresh[1]
    else:
        assert out["judge_accuracy_fresh"] is None and out["judge_accuracy_fresh_ci95"] is None


# --- the length-controlled win rate (AlpacaEval 2's GLM: L1 logistic regression, C by grouped cross-validation) ----

def blind_judge_a_longer(seed: int, n: int = 150):
    """The usual DPO case: A's answers always 5-60 characters longer, and a judge that ignores length and tosses a
    coin: the true rate, at any length difference, is 0.5."""
    rng = random.Random(seed)
    length_b = [rng.randint(40, 120) for _ in range(n)]
    length_a = [b + rng.randint(5, 60) for b in length_b]
    return [rng.choice([1.0, 0.0]) for _ in range(n)], length_a, length_b


def longer_wins(seed: int, n: int = 200):
    """A pure length preference: the judge always picks the longer answer (a tie at equal length); A is longer
    about four times in five, shorter in the rest."""
    rng = random.Random(seed)
    length_b = [rng.randint(40, 120) for _ in range(n)]
    length_a = [b + rng.randint(-10, 40) for b in length_b]
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(length_a, length_b)], length_a, length_b


def diffs(length_a, length_b):
    return [a - b for a, b in zip(length_a, length_b)]


def test_lc_length_blind_judge_with_a_always_longer_stays_at_the_true_rate():
    """The old fit (free intercept, Newton, almost no ridge) extrapolated theta to a length difference no prompt had:
    on these 20 draws of 150 prompts it was within 0.1 of 0.5 in 3. The L1 fit keeps the simpler account unless held-out
    prompts show the slope predicts: 17 of 20 here. When it does extrapolate (the cross-validation picked a weak
    penalty), AlpacaEval's guard flags it."""
    near = 0
    for seed in range(20):
        outcomes, length_a, length_b = blind_judge_a_longer(seed)
        lc = win_rates.length_controlled_rate(outcomes, diffs(length_a, length_b))
        raw = sum(outcomes) / len(outcomes)
        if abs(lc - 0.5) <= 0.1:
            near += 1
        else:
            assert win_rates.is_extreme_change(100 * raw, 100 * lc), (seed, raw, lc)
    assert near >= 15, near
    for seed in range(4):
        outcomes, length_a, length_b = blind_judge_a_longer(seed)
        out = length_controlled_win_rate(outcomes, length_a, length_b, resamples=100, seed=0)
        lo, hi = out["lc_win_rate_ci95"]
        assert out["lc_extreme_change"] or (abs(out["lc_win_rate"] - 0.5) <= 0.05 and lo <= 0.5 <= hi), (seed, out)
        assert lo <= out["lc_win_rate"] <= hi and hi - lo > 0.05, (seed, out)


def test_lc_removes_a_pure_length_preference():
    """The judge always picks the longer answer: the raw rate follows the lengths (above 0.7), the controlled one
    stays at a coin toss. Within 0.02 of 0.5 on 19 of these 20 draws (the old fit: 14)."""
    near = 0
    for seed in range(20):
        outcomes, length_a, length_b = longer_wins(seed)
        assert sum(outcomes) / len(outcomes) > 0.7
        near += abs(win_rates.length_controlled_rate(outcomes, diffs(length_a, length_b)) - 0.5) <= 0.02
    assert near >= 18, near
    outcomes, length_a, length_b = longer_wins(0)
    out = length_controlled_win_rate(outcomes, length_a, length_b, resamples=100, seed=0)
    lo, hi = out["lc_win_rate_ci95"]
    assert lo <= 0.5 <= hi and hi - lo < 0.1 and out["lc_length_coefficient"] > 0, out
    # AlpacaEval's guard cannot tell a large correction from a failed fit: a 0.74 -> 0.50 move is flagged
    assert out["lc_extreme_change"]


def test_lc_removes_a_smooth_length_bias():
    """A judge whose only reason is length, smoothly: P(A preferred) grows with A's extra characters. The interval
    of the controlled rate holds 0.5 whether A is as long as B on average or 30 characters longer."""
    rng = random.Random(0)
    n = 400
    length_b = [rng.randint(40, 120) for _ in range(n)]
    for stretch in (0, 30):
        length_a = [max(1, b + rng.randint(-40, 40) + stretch) for b in length_b]
        outcomes = [1.0 if rng.random() < 1 / (1 + math.exp(-(a - b) / 15)) else 0.0
                    for a, b in zip(length_a, length_b)]
        lc = length_controlled_win_rate(outcomes, length_a, length_b, resamples=100, seed=1)
        lo, hi = lc["lc_win_rate_ci95"]
        assert lo <= 0.5 <= hi, (stretch, lc)
        if stretch:
            assert sum(outcomes) / n > 0.75 and lc["lc_length_coefficient"] > 0


def test_lc_is_the_raw_rate_when_lengths_do_not_matter():
    """Lengths mixed both ways and a judge that ignores them: the controlled rate is the raw one (ties as half),
    give or take the penalty's pull towards 0.5. With equal lengths everywhere there is no length column at all."""
    for seed in range(3):
        rng = random.Random(seed)
        n = 200
        length_b = [rng.randint(40, 120) for _ in range(n)]
        length_a = [b + rng.randint(-40, 40) for b in length_b]
        outcomes = [1.0 if rng.random() < 0.7 else 0.5 if rng.random() < 0.3 else 0.0 for _ in range(n)]
        raw = sum(outcomes) / n
        out = length_controlled_win_rate(outcomes, length_a, length_b, resamples=100, seed=1)
        lo, hi = out["lc_win_rate_ci95"]
        assert out["lc_win_rate"] == pytest.approx(raw, abs=0.03) and lo <= raw <= hi, (seed, raw, out)
        assert not out["lc_extreme_change"]
    rng = random.Random(3)
    length_b = [rng.randint(40, 120) for _ in range(400)]
    outcomes = [1.0 if rng.random() < 0.8 else 0.0 for _ in range(400)]
    out = length_controlled_win_rate(outcomes, length_b, length_b, resamples=100, seed=1)
    assert out["lc_win_rate"] == pytest.approx(sum(outcomes) / 400, abs=0.01) and out["lc_win_rate_ci95"][0] > 0.7
    assert out["lc_length_coefficient"] == 0


def test_lc_interval_on_few_prompts_with_ties():
    """15 prompts, 14 ties and one loss. When the ties are different answers of different lengths, the interval
    has width and holds the point. When they are identical answers (length difference 0, the real run this comes
    from), the loss is the only prompt with a length difference and the fit puts it down to length, whatever its
    size (d / sd is sqrt(15) for a lone nonzero d): the rate at equal length is 0.5, from the 14 identical
    answers, and the draws barely move it. The interval holds the point but has almost no width: a property of
    the model on such data, not of the bootstrap."""
    outcomes = [0.5] * 14 + [0.0]
    rng = random.Random(5)
    length_b = [rng.randint(20, 60) for _ in range(15)]
    length_a = [b + rng.randint(-10, 10) for b in length_b]
    out = length_controlled_win_rate(outcomes, length_a, length_b, resamples=100, seed=0)
    lo, hi = out["lc_win_rate_ci95"]
    assert lo <= out["lc_win_rate"] <= hi and hi - lo > 0.05, out
    assert lo <= 7 / 15 <= hi  # the raw rate, ties as half
    out = length_controlled_win_rate(outcomes, [40] * 14 + [55], [40] * 14 + [38], resamples=100, seed=0)
    lo, hi = out["lc_win_rate_ci95"]
    assert lo <= out["lc_win_rate"] <= hi and out["lc_win_rate"] == pytest.approx(0.5, abs=1e-3), out


@pytest.mark.parametrize("raw, controlled, extreme", [
    (50, 37.6, False), (50, 37.4, True), (50, 62.4, False), (50, 62.6, True),  # a quarter of the way to 0 or 100
    (20, 10.1, False), (20, 9.9, True), (20, 39.9, False), (20, 40.1, True),   # down: 10 points; up: (100-20)/4
    (95, 71.3, False), (95, 71.2, True), (95, 99.9, False),                      # down: 95/4; up: never
])
def test_is_extreme_change_matches_alpacaeval(raw, controlled, extreme):
    assert win_rates.is_extreme_change(raw, controlled) is extreme


def test_lc_extreme_change_is_returned_and_logged(caplog):
    """A draw where the fit does extrapolate (raw 0.55, LC 0.83, A always longer): the dict says so and the
    evaluate stage logs a warning; an ordinary draw is not flagged."""
    import evaluate

    outcomes, length_a, length_b = blind_judge_a_longer(1)
    out = length_controlled_win_rate(outcomes, length_a, length_b, resamples=50, seed=0)
    assert out["lc_extreme_change"] is True and out["lc_win_rate"] > 0.75

    judged = evaluate.Judged([{"prompt": f"p{i}"} for i in range(len(outcomes))],
                             {"sft": ["y" * n for n in length_b], "dpo": ["x" * n for n in length_a]},
                             [{"verdict": verdict(o, 0.5), "rewards": [o, 0.5]} for o in outcomes])
    with caplog.at_level("WARNING", logger="evaluate"):
        metrics = evaluate.heldout_metrics(judged, seed=0)
    assert metrics["lc_extreme_change"] is True
    assert any(r.name == "evaluate" and r.levelname == "WARNING" and "length-controlled" in r.getMessage()
               for r in caplog.records)
    outcomes, length_a, length_b = blind_judge_a_longer(2)
    assert not length_controlled_win_rate(outcomes, length_a, length_b, resamples=50, seed=0)["lc_extreme_change"]


def test_lc_on_one_prompt_knows_nothing_and_no_resamples_is_an_error():
    one = length_controlled_win_rate([1.0], [30], [10], resamples=50)
    assert one["lc_win_rate_ci95"] == [0.0, 1.0]
    with pytest.raises(ValueError, match="resamples must be 1 or more"):
        length_controlled_win_rate([1.0, 0.0], [30, 10], [10, 30], resamples=0)
