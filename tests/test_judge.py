"""Evaluate-stage statistics against hand-computed values."""

import math
import random

import pytest

from preftune import judge
from preftune.judge import (judge_agreement, length_controlled_win_rate, paired_difference, wilson_interval,
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
    out = judge.judge_reliability(heldout, fresh)
    assert out["win_rate_informative"] is informative
    assert out["judge_accuracy"] == heldout[0] / heldout[1] and out["judge_pairs"] == heldout[1]
    lo, hi = out["judge_accuracy_ci95"]
    assert lo < out["judge_accuracy"] < hi
    if fresh[1]:
        assert out["judge_accuracy_fresh"] == fresh[0] / fresh[1] and out["judge_pairs_fresh"] == fresh[1]
    else:
        assert out["judge_accuracy_fresh"] is None and out["judge_accuracy_fresh_ci95"] is None


def test_length_controlled_win_rate_removes_a_pure_length_bias():
    """A judge that prefers the longer answer and nothing else: the raw win rate follows the lengths, the
    length-controlled rate stays at a coin toss (its interval holds 0.5)."""
    rng = random.Random(0)
    n = 400
    length_b = [rng.randint(40, 120) for _ in range(n)]
    for stretch in (0, 30):  # A's answers as long as B's on average, then 30 characters longer
        length_a = [max(1, b + rng.randint(-40, 40) + stretch) for b in length_b]
        # the judge's only reason: P(A preferred) grows with A's extra characters
        outcomes = [1.0 if rng.random() < 1 / (1 + math.exp(-(a - b) / 15)) else 0.0
                    for a, b in zip(length_a, length_b)]
        raw = sum(outcomes) / n
        lc = length_controlled_win_rate(outcomes, length_a, length_b, resamples=200, seed=1)
        lo, hi = lc["lc_win_rate_ci95"]
        assert lo <= 0.5 <= hi, (stretch, lc)
        if stretch:
            assert raw > 0.75 and lc["lc_length_coefficient"] > 0
    # A real preference at equal lengths survives the control
    length_a = list(length_b)
    outcomes = [1.0 if rng.random() < 0.8 else 0.0 for _ in range(n)]
    lc = length_controlled_win_rate(outcomes, length_a, length_b, resamples=200, seed=1)
    assert lc["lc_win_rate"] == pytest.approx(sum(outcomes) / n, abs=1e-4) and lc["lc_win_rate_ci95"][0] > 0.7
