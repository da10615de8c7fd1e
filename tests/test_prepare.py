"""stages/prepare.py through its CLI, as a user runs it: a params.yaml in the working directory."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from preftune.formats import load_pairs

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO / "tests" / "fixtures" / "datasets"
BAD = REPO / "tests" / "fixtures" / "bad"
OUTPUTS = ("train.jsonl", "heldout.jsonl", "sft.jsonl", "gold.jsonl")


def run_prepare(workdir: Path, **data) -> subprocess.CompletedProcess:
    """Write params.yaml (the repo's, data.* overridden; `seed` too if given) and run the stage in workdir."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    if "seed" in data:
        params["seed"] = data.pop("seed")
    params["data"].update(data)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return subprocess.run([sys.executable, str(REPO / "stages" / "prepare.py"), "--params", "params.yaml"],
                          cwd=workdir, capture_output=True, text=True, timeout=120)


def read(workdir: Path, name: str) -> list[dict]:
    with open(workdir / "data" / "prepared" / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def metrics(workdir: Path) -> dict:
    return json.loads((workdir / "metrics" / "prepare.json").read_text(encoding="utf-8"))


def ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr


def assert_one_line_error(workdir: Path, done: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, one line on stderr naming the problem, and nothing written."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("prepare: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    written = [p for d in ("data/prepared", "metrics") for p in (workdir / d).rglob("*") if p.is_file()]
    assert not written, written
    return line


# --- user datasets -------------------------------------------------------------------------------------

def _user_file(tmp_path: Path, name: str) -> str:
    """Copy a fixture into the working directory; return the relative path a user would write."""
    target = tmp_path / "prefs" / name
    target.parent.mkdir(parents=True)
    if name == "pairs.parquet":
        pd.DataFrame(load_pairs(DATASETS / "pairs.jsonl")).to_parquet(target)
    else:
        shutil.copy(DATASETS / name, target)
    return f"prefs/{name}"


@pytest.mark.parametrize("name", ["pairs.yaml", "pairs.jsonl", "pairs.json", "pairs.csv", "pairs.parquet",
                                  "implicit.jsonl", "conversational.jsonl"])
def test_user_dataset_is_split_into_train_and_heldout(tmp_path, name):
    source = _user_file(tmp_path, name)
    ok(run_prepare(tmp_path, source=source, heldout=1))
    expected = load_pairs(tmp_path / source)
    train, heldout = read(tmp_path, "train.jsonl"), read(tmp_path, "heldout.jsonl")
    assert len(heldout) == 1 and len(train) == len(expected) - 1
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    key = lambda r: (r["prompt"], r["chosen"], r["rejected"])  # noqa: E731
    assert sorted(map(key, train + heldout)) == sorted(map(key, expected))
    # The reference policy imitates the chosen answers of the training pairs; no gold set for user data.
    assert read(tmp_path, "sft.jsonl") == [{"prompt": r["prompt"], "response": r["chosen"]} for r in train]
    assert read(tmp_path, "gold.jsonl") == []
    m = metrics(tmp_path)
    assert m["pairs"] == {"train": len(train), "heldout": 1}
    assert m["dropped_too_long"] == 0 and m["label_swapped"] == 0


# --- bad inputs: exit 2, one line, nothing written ------------------------------------------------------

@pytest.mark.parametrize("name, needles", [
    ("missing_field.jsonl", ["missing_field.jsonl", "row 2", "field 'rejected'", "missing"]),
    ("empty_field.yaml", ["empty_field.yaml", "row 3", "field 'chosen'", "empty"]),
    ("non_string.json", ["non_string.json", "row 1", "field 'rejected'", "expected text"]),
    ("same_answers.csv", ["same_answers.csv", "row 3", "field 'rejected'", "identical"]),
    ("duplicate.jsonl", ["duplicate.jsonl", "row 3", "duplicate of row 1"]),
    ("pairs.txt", ["pairs.txt", "unknown format 'txt'"]),
])
def test_bad_dataset_file(tmp_path, name, needles):
    (tmp_path / "bad").mkdir()
    shutil.copy(BAD / name, tmp_path / "bad" / name)
    done = run_prepare(tmp_path, source=f"bad/{name}", heldout=1)
    assert_one_line_error(tmp_path, done, *needles)


def test_unknown_source_name(tmp_path):
    # A typo for "grammar" is taken as a file path.
    assert_one_line_error(tmp_path, run_prepare(tmp_path, source="grammer"), "grammer")


def test_dataset_file_that_does_not_exist(tmp_path):
    done = run_prepare(tmp_path, source="data/preferences/missing.jsonl")
    assert_one_line_error(tmp_path, done, "data/preferences/missing.jsonl", "not found")


@pytest.mark.parametrize("heldout", [3, 4, 0])
def test_heldout_that_does_not_fit_a_user_dataset(tmp_path, heldout):
    source = _user_file(tmp_path, "pairs.jsonl")  # 3 pairs
    assert_one_line_error(tmp_path, run_prepare(tmp_path, source=source, heldout=heldout), "data.heldout")


def test_heldout_that_does_not_fit_the_grammar_task(tmp_path):
    done = run_prepare(tmp_path, pairs=20, heldout=20, sft_demos=10, gold_prompts=10)
    assert_one_line_error(tmp_path, done, "data.heldout")


def test_label_noise_out_of_range(tmp_path):
    done = run_prepare(tmp_path, pairs=20, heldout=5, sft_demos=10, gold_prompts=10, label_noise=1.5)
    assert_one_line_error(tmp_path, done, "data.label_noise")


def test_max_chars_that_drops_everything(tmp_path):
    done = run_prepare(tmp_path, pairs=20, heldout=5, sft_demos=10, gold_prompts=10, max_chars=10)
    assert_one_line_error(tmp_path, done, "data.max_chars")


@pytest.mark.parametrize("key, value, needle", [
    ("tutor_noise", {"artikle": 0.5}, "artikle"),
    ("rejected_kinds", {"habbit": 1.0}, "habbit"),
])
def test_typo_in_generator_params(tmp_path, key, value, needle):
    """Currently failing: a ValueError traceback and exit 1 (see the report)."""
    done = run_prepare(tmp_path, pairs=20, heldout=5, sft_demos=10, gold_prompts=10, **{key: value})
    assert_one_line_error(tmp_path, done, needle, f"data.{key}")


# --- the grammar task ----------------------------------------------------------------------------------

def test_no_prompt_leaks_between_train_heldout_sft_and_gold(tmp_path):
    ok(run_prepare(tmp_path, pairs=200, heldout=50, sft_demos=1000, gold_prompts=200))
    sets = {name: read(tmp_path, name) for name in OUTPUTS}
    prompts = {name: {r["prompt"] for r in rows} for name, rows in sets.items()}
    assert len(sets["heldout.jsonl"]) == 50 and len(sets["train.jsonl"]) == 150
    assert len(sets["gold.jsonl"]) == 200 and len(sets["sft.jsonl"]) == 1000
    assert not prompts["train.jsonl"] & prompts["heldout.jsonl"]
    for name in ("train.jsonl", "heldout.jsonl", "sft.jsonl"):
        assert not prompts["gold.jsonl"] & prompts[name], name
        assert not {r["correct"] for r in sets["gold.jsonl"]} & {r["correct"] for r in sets[name]}, name


def test_label_noise_swaps_exactly_that_fraction_of_training_pairs(tmp_path):
    sizes = dict(pairs=200, heldout=50, sft_demos=20, gold_prompts=20)
    ok(run_prepare(tmp_path / "clean", label_noise=0.0, **sizes))
    ok(run_prepare(tmp_path / "noisy", label_noise=0.1, **sizes))
    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    for name in ("heldout.jsonl", "sft.jsonl", "gold.jsonl"):
        assert (clean / "data/prepared" / name).read_bytes() == (noisy / "data/prepared" / name).read_bytes()
    before, after = read(clean, "train.jsonl"), read(noisy, "train.jsonl")
    assert len(before) == len(after) == 150
    assert [r["prompt"] for r in before] == [r["prompt"] for r in after]
    swapped = 0
    for a, b in zip(before, after):
        if b.get("label_swapped"):
            swapped += 1
            assert (b["chosen"], b["rejected"]) == (a["rejected"], a["chosen"])
            assert {k: v for k, v in b.items() if k not in ("chosen", "rejected", "label_swapped")} == \
                   {k: v for k, v in a.items() if k not in ("chosen", "rejected")}
        else:
            assert b == a
    assert swapped == 15
    assert metrics(noisy)["label_swapped"] == 15 and metrics(clean)["label_swapped"] == 0
    assert not any("label_swapped" in r for r in read(noisy, "heldout.jsonl"))


def test_rows_longer_than_max_chars_are_dropped_and_counted(tmp_path):
    sizes = dict(pairs=200, heldout=20, sft_demos=20, gold_prompts=20)
    ok(run_prepare(tmp_path / "all", **sizes))
    rows = read(tmp_path / "all", "train.jsonl") + read(tmp_path / "all", "heldout.jsonl")
    length = lambda r: len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"]))  # noqa: E731
    limit = sorted(map(length, rows))[150]  # keeps about 150 of 200
    too_long = sum(length(r) > limit for r in rows)
    assert 10 < too_long < 60

    ok(run_prepare(tmp_path / "cut", max_chars=limit, **sizes))
    kept = read(tmp_path / "cut", "train.jsonl") + read(tmp_path / "cut", "heldout.jsonl")
    assert len(kept) == 200 - too_long
    assert all(length(r) <= limit for r in kept)
    assert metrics(tmp_path / "cut")["dropped_too_long"] == too_long
    assert metrics(tmp_path / "all")["dropped_too_long"] == 0


def test_long_rows_of_a_user_dataset_are_dropped(tmp_path):
    rows = [{"prompt": f"Fix the grammar: sentence {i} go.", "chosen": f" Sentence {i} goes.",
             "rejected": f" Sentence {i} go."} for i in range(4)]
    rows[2]["rejected"] = " " + "blah " * 100
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ok(run_prepare(tmp_path, source="prefs.jsonl", heldout=1, max_chars=200))
    kept = read(tmp_path, "train.jsonl") + read(tmp_path, "heldout.jsonl")
    assert sorted(r["prompt"] for r in kept) == sorted(r["prompt"] for i, r in enumerate(rows) if i != 2)
    assert metrics(tmp_path)["dropped_too_long"] == 1


def test_grammar_task_runs_for_another_seed(tmp_path):
    """Currently failing: seed 1 makes task.generate raise AssertionError (see the report)."""
    done = run_prepare(tmp_path, seed=1, pairs=200, heldout=50, sft_demos=20, gold_prompts=20)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1]
