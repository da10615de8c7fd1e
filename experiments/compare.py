"""Two configurations over seeds: is the difference real? A t interval over paired seeds, widened for the prompts.

    .venv/bin/python experiments/compare.py SET A B [--markdown FILE]

SET names experiments/results/SET.json and SET.per_prompt.json (exported by experiments/run.sh SET); A and B are
experiment-name prefixes whose runs end in -s<seed> (rpo-sigmoid-s1, rpo-sigmoid-s2, ... against rpo-rpo-s1, ...).
The runs are paired by seed, and each run's verdicts are paired by prompt (every run answers the same prompts).

For gold accuracy (the gold prompts), the strict win rate against SFT and the length-controlled win rate (the
held-out prompts) it prints A, B (each over all its seeds' verdicts), A - B and a 95% interval of A - B, and calls
the difference "significant" when the interval excludes 0. How the interval is made, in plain words:

- Seeds. Two runs with the same seed share their data order and initialisation, so each seed gives one paired
  difference: A's run minus B's run, each measured on all the prompts. What a seed does to both configurations
  alike cancels in it. The spread of these differences (their standard deviation s over k seeds) is how far the
  result would move with other seeds; it is estimated from k - 1 degrees of freedom only, 2 with 3 seeds, so the
  interval takes Student's t quantile (4.30 for 2 degrees of freedom, not 1.96). Seed term: s^2 / k.
- Prompts. Every run answered the same prompts, so a prompt on which A happens to do better counts in every seed,
  and the seeds' spread does not show it. The prompts are resampled (`draws` bootstrap draws, seeded, the same
  draw for every run, seeds held fixed) and the variance of A - B over the draws is the prompt term.
- The interval is A - B +- t * sqrt(seed term + prompt term), t with the seeds' k - 1 degrees of freedom: the
  seeds are the scarce information. (Welch-Satterthwaite degrees of freedom for the sum would take the prompt
  term as independent knowledge and shrink t; simulated, that called identical configurations significant 6-7%
  of the time at seed spreads 0.08-0.15.) Each seed's difference already carries its runs' own prompt-to-prompt
  noise, which the prompt term counts once more, so the interval errs on the wide side: tests/test_compare.py
  simulates identical configurations, with seed offsets shared by A and B plus per-run offsets, and 3 seeds
  call them significant at most 5% of the time at every seed spread it tries (0 to 0.15). The price is power:
  with 3 seeds only a difference of about 2.5 seed standard deviations, or 6 prompt standard errors, shows.

The length-controlled rate (win_rates.length_controlled_rate) is fitted with one L1 penalty per verdict for every fit
(each seed's run, each configuration's pooled runs, each draw): its C chosen once by the judge's cross-validation
on the pooled verdicts of both configurations, scaled by the number of verdicts of each fit. Deterministic: the
same inputs print the same table.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
from preftune.judging.win_rates import length_controlled_penalty, length_controlled_rate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DRAWS = 2000

# A measure: its value over the pooled verdicts of `runs` on prompts `idx` (one array of prompt indices), or one
# value per row when idx is a 2-D array (a bootstrap draw per row).
Measure = Callable[[list[dict], np.ndarray], "float | np.ndarray"]


def runs_by_seed(per_prompt: dict, prefix: str) -> dict[str, dict]:
    found = {m[1]: v for name, v in per_prompt.items() if (m := re.fullmatch(rf"{re.escape(prefix)}-s(\d+)", name))}
    if not found:
        sys.exit(f"compare: no runs named {prefix}-s<seed> in the set (it has {', '.join(sorted(per_prompt))})")
    return found


def _pooled_mean(values: np.ndarray, idx: np.ndarray):
    """values: runs x prompts. The mean over runs and the prompts idx (per row of idx when it is 2-D)."""
    return values[:, idx].mean(axis=(0, -1))


def gold_accuracy(runs: list[dict], idx: np.ndarray):
    return _pooled_mean(np.array([r["gold"]["correct_dpo"] for r in runs], dtype=float), idx)


def win_rate(runs: list[dict], idx: np.ndarray):
    """The strict win rate against SFT (ties count as not won)."""
    return _pooled_mean(np.array([r["heldout"]["outcome"] for r in runs], dtype=float) == 1.0, idx)


def _heldout(runs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(outcomes, length differences DPO - SFT), runs x prompts."""
    h = [r["heldout"] for r in runs]
    return (np.array([x["outcome"] for x in h], dtype=float),
            np.array([x["length_dpo"] for x in h], dtype=float) - np.array([x["length_sft"] for x in h], dtype=float))


def lc_rate(runs: list[dict], idx: np.ndarray, penalty: float):
    """The length-controlled win rate of the pooled verdicts of `runs` on prompts `idx`, at `penalty` per verdict
    (liblinear's C = 1 / (penalty * verdicts))."""
    outcomes, diffs = _heldout(runs)

    def one(i: np.ndarray) -> float:
        o, d = outcomes[:, i].ravel(), diffs[:, i].ravel()
        return length_controlled_rate(o, d, C=1.0 / (penalty * len(o)))

    return one(idx) if idx.ndim == 1 else np.array([one(i) for i in idx])


def lc_penalty(runs: list[dict]) -> float:
    """The per-verdict L1 penalty of every length-controlled fit: 1 / (C n) for the C that the judge's
    cross-validation chooses on the pooled verdicts (n of them) of `runs`."""
    outcomes, diffs = _heldout(runs)
    return 1.0 / (length_controlled_penalty(outcomes.ravel(), diffs.ravel()) * outcomes.size)


def prompt_counts(runs: dict[str, dict]) -> tuple[int, int]:
    """(gold prompts, held-out prompts) of every run, which must be the same for all: the runs are paired by
    prompt. Exits with one line naming the runs that differ."""
    counts = {name: (len(r["gold"]["correct_dpo"]), len(r["heldout"]["outcome"]), len(r["heldout"]["length_dpo"]),
                     len(r["heldout"]["length_sft"])) for name, r in runs.items()}
    if len(set(counts.values())) > 1 or any(c[1:] != (c[1],) * 3 for c in counts.values()):
        found = ", ".join(f"{name}: {c[0]} gold, {c[1]} held-out" for name, c in sorted(counts.items()))
        sys.exit(f"compare: the runs answered different prompts ({found}); export runs of one evaluation set")
    unread = sorted(name for name, r in runs.items() if None in r["heldout"]["outcome"])
    if unread:
        sys.exit(f"compare: {', '.join(unread)}: the judge's verdict on some held-out prompts could not be read "
                 "(outcome null in per_prompt.json); compare runs of a judge whose every verdict was read")
    return next(iter(counts.values()))[:2]


def paired_interval(a: list[dict], b: list[dict], measure: Measure, prompts: int, draws: int = DRAWS,
                    seed: int = 0) -> dict:
    """A - B of `measure` with its 95% interval (the module docstring says how). a[i] and b[i] are the two runs of
    one seed; every run has `prompts` prompts for this measure."""
    k = len(a)
    if k != len(b) or k < 2:
        raise ValueError(f"need the two configurations' runs of the same 2 or more seeds, got {k} and {len(b)}")
    everything = np.arange(prompts)
    point = float(measure(a, everything) - measure(b, everything))
    per_seed = np.array([measure([x], everything) - measure([y], everything) for x, y in zip(a, b)])
    draw = np.random.default_rng(seed).integers(0, prompts, size=(draws, prompts))
    boot = np.asarray(measure(a, draw) - measure(b, draw))
    seed_term = float(per_seed.var(ddof=1)) / k
    prompt_term = float(boot.var(ddof=1)) if draws > 1 else 0.0
    half = float(stats.t.ppf(0.975, k - 1)) * math.sqrt(seed_term + prompt_term)
    lo, hi = point - half, point + half
    # No spread at all, over seeds and prompts: nothing was measured (a length-controlled fit that the penalty
    # made null gives 0.5 for every run and draw), which is not a precise zero.
    return {"difference": point, "ci95": [lo, hi], "significant": lo > 0 or hi < 0, "estimable": hi > lo,
            "seed_sd": float(per_seed.std(ddof=1)), "per_seed": per_seed.tolist()}


def compare(set_name: str, prefix_a: str, prefix_b: str, draws: int = DRAWS, seed: int = 0,
            results: Path = RESULTS) -> list[dict]:
    per_prompt = json.loads((results / f"{set_name}.per_prompt.json").read_text())
    runs_a, runs_b = runs_by_seed(per_prompt, prefix_a), runs_by_seed(per_prompt, prefix_b)
    seeds = sorted(set(runs_a) & set(runs_b), key=int)
    if len(seeds) < 2:
        sys.exit(f"compare: {prefix_a} and {prefix_b} share {len(seeds)} seed(s); a comparison over seeds needs 2 or more")
    a, b = [runs_a[s] for s in seeds], [runs_b[s] for s in seeds]
    n_gold, n_heldout = prompt_counts({f"{prefix}-s{s}": runs[s] for prefix, runs in ((prefix_a, runs_a),
                                                                                    (prefix_b, runs_b)) for s in seeds})
    measures: dict[str, tuple[Measure, int]] = {
        "gold accuracy": (gold_accuracy, n_gold),
        "win rate vs SFT": (win_rate, n_heldout),
        "length-controlled win rate": (partial(lc_rate, penalty=lc_penalty(a + b)), n_heldout),
    }
    rows = []
    for name, (measure, prompts) in measures.items():
        everything = np.arange(prompts)
        rows.append({"measure": name, "a": float(measure(a, everything)), "b": float(measure(b, everything)),
                     **paired_interval(a, b, measure, prompts, draws, seed), "seeds": len(seeds), "draws": draws})
    return rows


def markdown(rows: list[dict], prefix_a: str, prefix_b: str) -> str:
    lines = [f"| measure | {prefix_a} | {prefix_b} | difference | 95% interval (prompts x seeds) | verdict |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        verdict = ("significant" if r["significant"] else "not significant") if r["estimable"] else \
            "not estimable (no spread over seeds or prompts)"
        lines.append(f"| {r['measure']} | {r['a']:.3f} | {r['b']:.3f} | {r['difference']:+.3f} | "
                     f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {verdict} |")
    k = rows[0]["seeds"]
    return "\n".join(lines) + (f"\n\n{k} seeds each, paired by seed and by prompt; Student's t over the {k} seeds' "
                               f"differences, widened by the prompts' variance ({rows[0]['draws']} bootstrap draws)."
                               "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set")
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    rows = compare(args.set, args.a, args.b)
    table = markdown(rows, args.a, args.b)
    print(table, end="")
    if args.markdown:
        Path(args.markdown).write_text(table)


if __name__ == "__main__":
    main()
