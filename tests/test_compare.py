"""experiments/compare.py on synthetic runs: a real difference between two configurations is significant, the same
configuration against itself is not, and the interval holds the seed-to-seed spread."""

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import compare  # noqa: E402


def run(rng, gold_rate: float, win_rate: float, n_gold=300, n_heldout=50) -> dict:
    return {"gold": {"correct_dpo": [int(rng.random() < gold_rate) for _ in range(n_gold)]},
            "heldout": {"outcome": [1.0 if rng.random() < win_rate else 0.0 for _ in range(n_heldout)],
                        "length_dpo": [rng.randint(20, 60) for _ in range(n_heldout)],
                        "length_sft": [rng.randint(20, 60) for _ in range(n_heldout)]}}


def write(tmp_path, runs: dict) -> None:
    (tmp_path / "demo.per_prompt.json").write_text(json.dumps(runs))


def test_a_real_gold_difference_is_significant_and_no_difference_is_not(tmp_path):
    rng = random.Random(0)
    write(tmp_path, {**{f"good-s{s}": run(rng, 0.7, 0.6) for s in (1, 2, 3)},
                     **{f"bad-s{s}": run(rng, 0.4, 0.6) for s in (1, 2, 3)},
                     **{f"same-s{s}": run(rng, 0.7, 0.6) for s in (1, 2, 3)}})
    rows = {r["measure"]: r for r in compare.compare("demo", "good", "bad", draws=300, results=tmp_path)}
    gold = rows["gold accuracy"]
    assert gold["difference"] == pytest.approx(0.3, abs=0.05) and gold["significant"] and gold["ci95"][0] > 0.2
    assert rows["win rate vs SFT"]["ci95"][0] < 0 < rows["win rate vs SFT"]["ci95"][1]
    rows = {r["measure"]: r for r in compare.compare("demo", "good", "same", draws=300, results=tmp_path)}
    assert not rows["gold accuracy"]["significant"]
    table = compare.markdown(list(rows.values()), "good", "same")
    assert "| gold accuracy |" in table and "not significant" in table


def test_one_seed_is_not_a_comparison(tmp_path):
    rng = random.Random(1)
    write(tmp_path, {"a-s1": run(rng, 0.5, 0.5), "b-s1": run(rng, 0.5, 0.5)})
    with pytest.raises(SystemExit, match="needs 2 or more"):
        compare.compare("demo", "a", "b", results=tmp_path)
