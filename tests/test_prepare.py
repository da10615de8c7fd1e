"""stages/prepare.py through its CLI, as a user runs it: a params.yaml in the working directory."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from preftune.data.formats import load_pairs

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO / "tests" / "fixtures" / "datasets"
BAD = REPO / "tests" / "fixtures" / "bad"
OUTPUTS = ("train.jsonl", "heldout.jsonl", "sft.jsonl", "checks/gold.jsonl")
NO_CUTS = {"rows_cut": 0, "prompts_cut": 0, "prompt_turns_dropped": 0, "prompts_cut_in_earlier_turn": 0,
           "prompts_cut_in_last_turn": 0, "prompts_cut_as_text": 0, "prompt_tokens_removed": 0, "chosen_cut": 0,
           "rejected_cut": 0, "chosen_tokens_removed": 0, "rejected_tokens_removed": 0,
           "dropped_answer_too_long": 0, "dropped_nothing_left": 0, "dropped_identical_after_cut": 0}


def run_prepare(workdir: Path, model: dict | None = None, **data) -> subprocess.CompletedProcess:
    """Write params.yaml (the repo's, data.* and model.* overridden; `seed` too if given) and run the stage."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    if "seed" in data:
        params["seed"] = data.pop("seed")
    params["data"].update(data)
    params["model"].update(model or {})
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

def _user_file(tmp_path: Path, name: str, source: Path = DATASETS) -> str:
    """Copy a fixture into data/raw/ of the working directory; return the relative path a user would write."""
    target = tmp_path / "data" / "raw" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if name == "pairs.parquet":
        pd.DataFrame(load_pairs(DATASETS / "pairs.jsonl")).to_parquet(target)
    else:
        shutil.copy(source / name, target)
    return f"data/raw/{name}"


def without_messages(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "messages"} for r in rows]


@pytest.mark.parametrize("name", ["pairs.yaml", "pairs.jsonl", "pairs.json", "pairs.csv", "pairs.parquet",
                                  "implicit.jsonl", "conversational.jsonl", "alpaca.json"])
def test_user_dataset_is_split_into_train_and_heldout(tmp_path, name):
    source = _user_file(tmp_path, name)
    ok(run_prepare(tmp_path, source=source, heldout=1))
    expected = without_messages(load_pairs(tmp_path / source))
    train, heldout = read(tmp_path, "train.jsonl"), read(tmp_path, "heldout.jsonl")
    assert len(heldout) == 1 and len(train) == len(expected) - 1
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    key = lambda r: (r["prompt"], r["chosen"], r["rejected"])  # noqa: E731
    assert sorted(map(key, train + heldout)) == sorted(map(key, expected))
    # The reference policy imitates the chosen answers of the training pairs; no gold set for user data.
    assert read(tmp_path, "sft.jsonl") == [{"prompt": r["prompt"], "response": r["chosen"]} for r in train]
    assert sorted(p.name for p in (tmp_path / "data" / "prepared" / "checks").iterdir()) == ["README.md"]
    m = metrics(tmp_path)
    assert m["pairs"] == {"train": len(train), "heldout": 1}
    assert m["label_swapped"] == 0 and m["duplicates_dropped"] == 0
    assert m["length"] == {"max_length": 128, "max_prompt_length": 64, "truncation": "truncate", **NO_CUTS}
    # Only what applies to a user dataset: no built-in-task counts, not even empty ones.
    assert not {"gold_prompts", "judge_pairs", "train_by_category", "sft_by_tutor_kind"} & set(m)


# --- bad inputs: exit 2, one line, nothing written ------------------------------------------------------

@pytest.mark.parametrize("name, needles", [
    ("missing_field.jsonl", ["missing_field.jsonl", "row 2", "field 'rejected'", "missing"]),
    ("empty_field.yaml", ["empty_field.yaml", "row 3", "field 'chosen'", "empty"]),
    ("non_string.json", ["non_string.json", "row 1", "field 'rejected'", "expected text"]),
    ("same_answers.csv", ["same_answers.csv", "row 3", "field 'rejected'", "identical"]),
    ("pairs.txt", ["pairs.txt", "unknown format 'txt'"]),
])
def test_bad_dataset_file(tmp_path, name, needles):
    done = run_prepare(tmp_path, source=_user_file(tmp_path, name, BAD), heldout=1)
    assert_one_line_error(tmp_path, done, *needles)


def test_duplicates_can_be_an_error(tmp_path):
    done = run_prepare(tmp_path, source=_user_file(tmp_path, "duplicate.jsonl", BAD), heldout=1, duplicates="error")
    assert_one_line_error(tmp_path, done, "duplicate.jsonl", "row 3", "duplicate of row 1", "data.duplicates: drop")
    done = run_prepare(tmp_path, source="data/raw/duplicate.jsonl", heldout=1, duplicates="keep")
    assert_one_line_error(tmp_path, done, "data.duplicates", "must be one of drop, error")


def test_duplicates_are_dropped_and_counted_by_default(tmp_path):
    ok(run_prepare(tmp_path, source=_user_file(tmp_path, "duplicate.jsonl", BAD), heldout=1))
    rows = read(tmp_path, "train.jsonl") + read(tmp_path, "heldout.jsonl")
    assert len(rows) == len(load_pairs(BAD / "duplicate.jsonl")) - 1
    assert metrics(tmp_path)["duplicates_dropped"] == 1


def test_unknown_source_name(tmp_path):
    # A typo for "grammar" is taken as a file path.
    assert_one_line_error(tmp_path, run_prepare(tmp_path, source="grammer"), "grammer", "data/raw/")


def test_dataset_file_that_does_not_exist(tmp_path):
    done = run_prepare(tmp_path, source="data/raw/missing.jsonl")
    assert_one_line_error(tmp_path, done, "data/raw/missing.jsonl", "not found")


@pytest.mark.parametrize("where, needles", [
    ("userdata/pairs.jsonl", ["'userdata/pairs.jsonl' is not under data/raw/", "git mv userdata/pairs.jsonl "
                              "data/raw/pairs.jsonl", "data.source: data/raw/pairs.jsonl"]),
    ("{outside}/pairs.jsonl", ["is not under data/raw/", "dvc add data/raw/pairs.jsonl", "dvc import-url"]),
    ("../pairs.jsonl", ["is not under data/raw/", "dvc import-url ../pairs.jsonl data/raw/pairs.jsonl"]),
])
def test_a_source_dvc_would_not_track_is_refused(tmp_path, where, needles):
    """The bug of the issue: a dataset outside data/raw/ was no DVC dependency, so edits to it changed nothing."""
    repo = tmp_path / "repo"
    source = where.format(outside=tmp_path / "elsewhere")
    file = (repo / source).resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(DATASETS / "pairs.jsonl", file)
    assert_one_line_error(repo, run_prepare(repo, source=source, heldout=1), *needles)


def test_hub_source_says_to_fetch_it_first(tmp_path):
    done = run_prepare(tmp_path, source="hf:trl-lib/ultrafeedback_binarized")
    assert_one_line_error(tmp_path, done, "python stages/fetch_hub.py trl-lib/ultrafeedback_binarized --split train",
                          "data/raw/")


def test_fetched_hub_split_is_a_pinned_file_under_data_raw(tmp_path, monkeypatch):
    """The Hub cannot be reached here, so `datasets` and `huggingface_hub` are stand-ins; what is real is
    the file fetch_hub writes and prepare reading it as any other dataset."""
    import types

    import fetch_hub

    calls = []
    rows = [{"prompt": f"Fix: he go {i}.", "chosen": f"He goes {i}.", "rejected": f"He go {i}.", "score": i}
            for i in range(5)]
    fake_datasets = types.SimpleNamespace(load_dataset=lambda name, split, revision: calls.append(revision) or rows)
    api = types.SimpleNamespace(dataset_info=lambda name: types.SimpleNamespace(sha="0123456789abcdef" * 2 + "01234567"))
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets)
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(HfApi=lambda: api))
    monkeypatch.chdir(tmp_path)
    path = fetch_hub.fetch("org/prefs", "train", None)
    assert path == "data/raw/org__prefs-train-0123456789ab.jsonl" and calls == ["0123456789abcdef" * 2 + "01234567"]
    assert fetch_hub.fetch("org/prefs", "test", "feedface") == "data/raw/org__prefs-test-feedface.jsonl"
    ok(run_prepare(tmp_path, source=path, heldout=1))
    assert len(read(tmp_path, "train.jsonl")) == 4


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


def test_max_length_that_drops_everything(tmp_path):
    done = run_prepare(tmp_path, model={"max_length": 10}, pairs=20, heldout=5, sft_demos=10, gold_prompts=10,
                       truncation="drop")
    assert_one_line_error(tmp_path, done, "model.max_length")
    done = run_prepare(tmp_path, model={"max_length": 10, "max_prompt_length": 10}, pairs=20, heldout=5)
    assert_one_line_error(tmp_path, done, "model.max_prompt_length", "no room")


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
    assert len(sets["checks/gold.jsonl"]) == 200 and len(sets["sft.jsonl"]) == 1000
    assert not prompts["train.jsonl"] & prompts["heldout.jsonl"]
    for name in ("train.jsonl", "heldout.jsonl", "sft.jsonl"):
        assert not prompts["checks/gold.jsonl"] & prompts[name], name
        assert not {r["correct"] for r in sets["checks/gold.jsonl"]} & {r["correct"] for r in sets[name]}, name


def test_label_noise_swaps_exactly_that_fraction_of_training_pairs(tmp_path):
    sizes = dict(pairs=200, heldout=50, sft_demos=20, gold_prompts=20)
    ok(run_prepare(tmp_path / "clean", label_noise=0.0, **sizes))
    ok(run_prepare(tmp_path / "noisy", label_noise=0.1, **sizes))
    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    for name in ("heldout.jsonl", "sft.jsonl", "checks/gold.jsonl"):
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


def test_sharegpt_file_fitted_to_the_budget_with_every_cut_counted(tmp_path):
    """Multi-turn prompts with system messages, long rows and duplicates (tests/fixtures/datasets/sharegpt.json):
    with a 300-token scratch vocabulary (about 1.3 bytes a token) and max_length 600, under `data.truncation: drop`
    the 4,000-byte answer is dropped, the long conversation loses its oldest turn (a question and its answer: two
    messages, keeping its system message and last question), the 3,400-byte single question loses tokens from the
    start of its text, keeping its "user:" header, and the two exact duplicates go."""
    from preftune.data.encoding import Encoder
    from preftune.model.loading import load_tokenizer

    source = _user_file(tmp_path, "sharegpt.json")
    ok(run_prepare(tmp_path, model={"max_length": 600, "vocab_size": 300}, source=source, heldout=2,
                   truncation="drop"))
    m = metrics(tmp_path)
    assert m["duplicates_dropped"] == 2
    length = m["length"]
    assert (length["dropped_answer_too_long"], length["prompt_turns_dropped"], length["prompts_cut"]) == (1, 2, 2)
    assert length["prompts_cut_in_last_turn"] == 1 and length["prompts_cut_as_text"] == 0
    assert length["chosen_cut"] == length["rejected_cut"] == 0  # drop never cuts an answer
    rows = read(tmp_path, "train.jsonl") + read(tmp_path, "heldout.jsonl")
    assert len(rows) == 12 - 2 - 1 and m["pairs"]["train"] + m["pairs"]["heldout"] == 9
    encode = Encoder(load_tokenizer(str(tmp_path / "data" / "prepared" / "tokenizer")), 600)
    for r in rows:
        assert max(len(encode.row(r, f).ids) for f in ("chosen", "rejected")) <= 600
    assert encode.stats()["truncated"] == 0
    summary = next(r for r in rows if r["chosen"] == " Yes.\n")
    assert summary["prompt"].startswith("system: You summarise long discussions.\nuser: ")
    assert summary["prompt"].endswith("user: So, in one word: yes or no?\nassistant:")
    assert "(part 1)" not in summary["prompt"]
    cut = next(r for r in rows if r["chosen"] == " He and I are here.\n")
    assert cut["prompt"].endswith("Now fix: 'me and him is here'.\nassistant:") and cut["prompt"].startswith("user: ")
    assert len(encode.prompt_ids(cut["prompt"])) >= 600 - 30  # cut to what the answer leaves, not further
    assert list(cut["messages"]) == ["prompt"]  # the prompt's messages stay, for evaluate's and the rounds' cuts
    assert cut["messages"]["prompt"][-1]["content"].endswith("Now fix: 'me and him is here'.")

    # The default, truncate: the long answer is cut (no EOS, marked) instead of its pair being dropped.
    ok(run_prepare(tmp_path / "cut", model={"max_length": 600, "vocab_size": 300},
                   source=_user_file(tmp_path / "cut", "sharegpt.json"), heldout=2))
    m = metrics(tmp_path / "cut")
    assert m["pairs"]["train"] + m["pairs"]["heldout"] == 10 and m["length"]["dropped_answer_too_long"] == 0
    assert m["length"]["chosen_cut"] == 1 and m["length"]["chosen_tokens_removed"] > 0
    rows = read(tmp_path / "cut", "train.jsonl") + read(tmp_path / "cut", "heldout.jsonl")
    long = [r for r in rows if r.get("chosen_cut")]
    assert len(long) == 1 and not long[0]["chosen"].endswith("\n")  # the rendered answer's end went with the cut
    encode = Encoder(load_tokenizer(str(tmp_path / "cut" / "data" / "prepared" / "tokenizer")), 600)
    assert len(encode.row(long[0], "chosen").ids) <= 600 and encode.row(long[0], "chosen").ids[-1] != encode.eos
    assert encode.stats()["truncated"] == 0


def test_grammar_task_fits_the_default_budget_untouched(tmp_path):
    ok(run_prepare(tmp_path, pairs=200, heldout=20, sft_demos=20, gold_prompts=20))
    assert metrics(tmp_path)["length"] == {"max_length": 128, "max_prompt_length": 64, "truncation": "truncate",
                                           **NO_CUTS}


def test_heldout_as_a_fraction_and_a_split_that_leaves_too_little_to_train(tmp_path):
    ok(run_prepare(tmp_path, pairs=200, heldout=0.1, sft_demos=20, gold_prompts=20))
    assert metrics(tmp_path)["pairs"]["heldout"] in range(20, 24)  # whole prompts: a group may overshoot
    done = run_prepare(tmp_path / "few", pairs=40, heldout=25, sft_demos=20, gold_prompts=20)
    line = assert_one_line_error(tmp_path / "few", done, "data.heldout", "fewer than held out", "0.1")
    assert "to train on" in line
    for bad in (0, 1.5, -0.2, "many"):
        assert_one_line_error(tmp_path / "bad", run_prepare(tmp_path / "bad", pairs=40, heldout=bad), "data.heldout")


def test_grammar_task_runs_for_another_seed(tmp_path):
    """Currently failing: seed 1 makes task.generate raise AssertionError (see the report)."""
    done = run_prepare(tmp_path, seed=1, pairs=200, heldout=50, sft_demos=20, gold_prompts=20)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1]
