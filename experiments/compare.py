"""Two configurations over seeds: is the difference real? A paired bootstrap over prompts and seeds.

    .venv/bin/python experiments/compare.py SET A B [--markdown FILE]

SET names experiments/results/SET.json and SET.per_prompt.json (exported by experiments/run.sh SET); A and B are
experiment-name prefixes whose runs end in -s<seed> (rpo-sigmoid-s1, rpo-sigmoid-s2, ... against rpo-rpo-s1, ...).
The runs are paired by seed, and each run's verdicts are paired by prompt (every run answers the same prompts).

For gold accuracy (the gold prompts), the strict win rate against SFT and the length-controlled win rate (the
held-out prompts), it prints A, B, A - B and a 95% interval of A - B: each of 2,000 draws resamples the seeds and,
once for both configurations, the prompts, so the interval holds both the seed-to-seed and the prompt-to-prompt
spread. "significant" when the interval excludes 0. Seeded: the same inputs print the same table.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
from preftune.judge import length_controlled_rate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DRAWS = 2000


def runs_by_seed(per_prompt: dict, prefix: str) -> dict[str, dict]:
    found = {m[1]: v for name, v in per_prompt.items() if (m := re.fullmatch(rf"{re.escape(prefix)}-s(\d+)", name))}
    if not found:
        sys.exit(f"compare: no runs named {prefix}-s<seed> in the set (it has {', '.join(sorted(per_prompt))})")
    return found


def gold(run: dict, idx: list[int]) -> list[float]:
    return [run["gold"]["correct_dpo"][i] for i in idx]


def wins(run: dict, idx: list[int]) -> list[float]:
    return [float(run["heldout"]["outcome"][i] == 1.0) for i in idx]


def lc(runs: list[dict], idx: list[int]) -> float:
    """The length-controlled win rate of the pooled verdicts of `runs` on prompts `idx`."""
    h = [r["heldout"] for r in runs]
    return length_controlled_rate([x["outcome"][i] for x in h for i in idx],
                                  [x["length_dpo"][i] - x["length_sft"][i] for x in h for i in idx])


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def measures(a: list[dict], b: list[dict], gold_idx: list[int], heldout_idx: list[int]) -> dict[str, tuple]:
    return {
        "gold accuracy": (mean([v for r in a for v in gold(r, gold_idx)]), mean([v for r in b for v in gold(r, gold_idx)])),
        "win rate vs SFT": (mean([v for r in a for v in wins(r, heldout_idx)]),
                            mean([v for r in b for v in wins(r, heldout_idx)])),
        "length-controlled win rate": (lc(a, heldout_idx), lc(b, heldout_idx)),
    }


def compare(set_name: str, prefix_a: str, prefix_b: str, draws: int = DRAWS, seed: int = 0,
            results: Path = RESULTS) -> list[dict]:
    per_prompt = json.loads((results / f"{set_name}.per_prompt.json").read_text())
    runs_a, runs_b = runs_by_seed(per_prompt, prefix_a), runs_by_seed(per_prompt, prefix_b)
    seeds = sorted(set(runs_a) & set(runs_b), key=int)
    if len(seeds) < 2:
        sys.exit(f"compare: {prefix_a} and {prefix_b} share {len(seeds)} seed(s); a comparison over seeds needs 2 or more")
    a, b = [runs_a[s] for s in seeds], [runs_b[s] for s in seeds]
    n_gold, n_heldout = len(a[0]["gold"]["correct_dpo"]), len(a[0]["heldout"]["outcome"])
    point = measures(a, b, list(range(n_gold)), list(range(n_heldout)))
    rng = random.Random(seed)
    diffs: dict[str, list[float]] = {name: [] for name in point}
    for _ in range(draws):
        picked = [rng.randrange(len(seeds)) for _ in seeds]
        g = [rng.randrange(n_gold) for _ in range(n_gold)]
        h = [rng.randrange(n_heldout) for _ in range(n_heldout)]
        for name, (x, y) in measures([a[i] for i in picked], [b[i] for i in picked], g, h).items():
            diffs[name].append(x - y)
    rows = []
    for name, (x, y) in point.items():
        d = sorted(diffs[name])
        lo, hi = d[int(0.025 * draws)], d[int(0.975 * draws) - 1]
        rows.append({"measure": name, "a": x, "b": y, "difference": x - y, "ci95": [lo, hi],
                     "significant": lo > 0 or hi < 0, "seeds": len(seeds)})
    return rows


def markdown(rows: list[dict], prefix_a: str, prefix_b: str) -> str:
    lines = [f"| measure | {prefix_a} | {prefix_b} | difference | 95% interval (prompts x seeds) | verdict |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "significant" if r["significant"] else "not significant"
        lines.append(f"| {r['measure']} | {r['a']:.3f} | {r['b']:.3f} | {r['difference']:+.3f} | "
                     f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {verdict} |")
    return "\n".join(lines) + f"\n\n{rows[0]['seeds']} seeds each, paired by seed and by prompt; {DRAWS} bootstrap draws.\n"


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
