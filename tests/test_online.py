"""On-policy rounds: the pure pieces (pairing, the rounds' params, the hacking flag), then the real `dvc` on the
tiny pipeline: two rounds run as stages, round 2 samples from round 1's model, adding a third round runs only it
and its evaluation, and a killed round resumes to the outputs of a run that was never killed."""

import hashlib
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from dvc_helpers import ROOT, Background, copy_repo, dvc, git, output, read_params

sys.path.insert(0, str(ROOT / "stages"))
from preftune.pipeline import schema  # noqa: E402
from preftune.pipeline.errors import ConfigError  # noqa: E402
from preftune.pipeline.params import load_params  # noqa: E402
from preftune.train.checkpoints import stage_spec  # noqa: E402
from preftune.train.rounds import best_and_worst, form_pairs, reward_hacking, round_seed, round_spec  # noqa: E402


def test_best_against_worst_and_what_cannot_pair():
    assert best_and_worst([0.1, 0.9, -0.3, 0.9], ["a", "b", "c", "d"]) == (1, 2)  # the first of equal bests
    assert best_and_worst([1.0, 1.0, 1.0], ["a", "b", "c"]) is None  # all equal: a tie
    assert best_and_worst([1.0, 0.0], ["same", "same"]) is None
    assert best_and_worst([0.0, 1.0, 0.0, 1.0], ["w", "r", "w2", "r2"]) == (1, 0)  # gold: first right vs first wrong


def test_form_pairs_counts_every_prompt():
    records = [{"prompt": "p1"}, {"prompt": "p2"}, {"prompt": "p3"}]
    answers = [["a", "b"], ["c", "d"], ["e", "f"]]
    scores = [[0.2, 0.7], [0.5, 0.5], [1.0, 0.0]]
    finished = [[True, False], [True, True], [True, True]]
    rows, counts = form_pairs(records, answers, scores, finished)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("p1", "b", "a"), ("p3", "e", "f")]
    assert rows[0]["chosen_cut"] and not rows[0]["rejected_cut"]  # an answer that ran out of tokens gets no EOS
    assert counts["prompts"] == 3 and counts["pairs"] == 2 and counts["ties_dropped"] == 1
    assert counts["score_chosen_mean"] == pytest.approx(0.85) and counts["score_rejected_mean"] == pytest.approx(0.1)


def test_round_settings_are_dpo_with_the_rounds_own_keys():
    params = load_params(str(ROOT / "params.yaml"))
    assert params["online"]["rounds"] == {}  # none by default: the pipeline is the offline one
    params["online"]["rounds"] = {"round1": {"from": "dpo"}, "round2": {"from": "round1", "beta": 0.5}}
    schema.check(params)
    start, cfg = round_spec(params, "round2")
    assert start == "round1" and cfg["beta"] == 0.5 and cfg["lr"] == params["dpo"]["lr"] and "from" not in cfg
    assert round_spec(params, "round1")[1]["beta"] == params["dpo"]["beta"]
    assert round_seed(42, "round1") == round_seed(42, "round1") != round_seed(42, "round2")
    with pytest.raises(ConfigError, match="no round 'round9'"):
        round_spec(params, "round9")


@pytest.mark.parametrize("rounds, message", [
    ({"round1": {"from": "round2"}, "round2": {"from": "dpo"}}, "online.rounds.round1.from: 'round2' is not dpo"),
    ({"round1": {}}, "online.rounds.round1: {} needs a 'from'"),
    ({"dpo": {"from": "dpo"}}, "'dpo' is not a usable round name"),
    ({"round1": {"from": "dpo", "betta": 0.5}}, "online.rounds.round1.betta: unknown key; did you mean beta?"),
    ({"round1": {"from": "dpo", "lr": 2}}, "online.rounds.round1.lr: 2 must be a number"),
    (3, "online.rounds: 3 must be a mapping of round names"),
    # A round's settings pass the dpo rules too, naming the key that set the value.
    ({"round1": {"from": "dpo", "loss": "ipo", "beta": 0}}, "online.rounds.round1.beta: ipo's target margin"),
    ({"round1": {"from": "dpo", "loss": ["sigmoid", "sft"], "loss_weights": [1.0]}},
     "online.rounds.round1.loss_weights: [1.0] has 1 weights for 2 loss term(s)"),
    ({"round1": {"from": "dpo", "loss": ["sigmoid", "sft"]}, "round2": {"from": "round1", "loss_weights": [1, 2, 3]}},
     "online.rounds.round2.loss_weights: [1, 2, 3] has 3 weights"),
])
def test_bad_rounds_are_one_line(rounds, message):
    params = load_params(str(ROOT / "params.yaml"))
    params["online"]["rounds"] = rounds
    with pytest.raises(ConfigError, match=re.escape(message)):
        schema.check(params)


def test_a_round_with_beta_zero_warns_in_the_online_stage():
    params = load_params(str(ROOT / "params.yaml"))
    params["online"]["rounds"] = {"round1": {"from": "dpo", "beta": 0}}
    with pytest.warns(UserWarning, match=r"online\.rounds\.round1\.beta is 0"):
        schema.check(params, "online")


def test_reward_hacking_is_judge_up_and_gold_down():
    before = {"win_rate": 0.5, "gold_accuracy": 0.6}
    assert reward_hacking(before, {"win_rate": 0.7, "gold_accuracy": 0.5}) is True
    assert reward_hacking(before, {"win_rate": 0.7, "gold_accuracy": 0.7}) is False
    assert reward_hacking(before, {"win_rate": 0.4, "gold_accuracy": 0.5}) is False  # worse, but not hacking
    assert reward_hacking({"win_rate": 0.5, "gold_accuracy": None}, {"win_rate": 0.9, "gold_accuracy": None}) is None


def test_checkpoint_key_resolves_a_foreach_stage_as_dvc_does():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = {"online": {"rounds": {"round1": {"from": "dpo"}, "round2": {"from": "round1"}}}}
    spec = stage_spec(stages, "online@round2", params)
    assert "models/round1" in spec["deps"] and "online.rounds.round2" in spec["params"]
    assert "models/round2" in spec["outs"] and "${" not in json.dumps(spec)


# The real pipeline ---------------------------------------------------------------------------------------------

ROUNDS = {"round1": {"from": "dpo"}, "round2": {"from": "round1"}}


def ran(proc) -> set[str]:
    text = proc.stdout + proc.stderr
    return {line.split("'")[1] for line in text.splitlines() if line.startswith("Running stage '")}


def set_rounds(repo: Path, rounds: dict, **online) -> None:
    params = read_params(repo)
    params["online"].update({"rounds": rounds, **online})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def two_rounds(tiny_run, tmp_path_factory):
    repo = copy_repo(tiny_run.repo, tmp_path_factory.mktemp("online") / "repo")
    set_rounds(repo, ROUNDS, samples=3)
    git("commit", "-qam", "two on-policy rounds", cwd=repo)
    repro = dvc("repro", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "two rounds ran", cwd=repo)
    return repo, repro


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_two_rounds_run_as_stages_each_sampling_from_the_one_before(two_rounds):
    repo, repro = two_rounds
    assert ran(repro) == {"online@round1", "online@round2", "evaluate_round@round1", "evaluate_round@round2"}, \
        output(repro)
    for name, start in (("round1", "dpo"), ("round2", "round1")):
        counts = json.loads((repo / "metrics" / "online" / name / "round.json").read_text())
        assert counts["from"] == start and counts["prompts"] == 30 and counts["samples"] == 90
        assert counts["pairs"] + counts["ties_dropped"] == counts["prompts"] and counts["pairs"] > 0
        # the samples came from the model this round starts from, as it is on disk
        assert counts["sampled_from_sha256"] == sha256(repo / "models" / start / "model.safetensors")
        pairs = [json.loads(line) for line in (repo / "data" / "online" / name / "pairs.jsonl").open()]
        assert len(pairs) == counts["pairs"] and all(p["chosen_score"] > p["rejected_score"] for p in pairs)
        evaluation = json.loads((repo / "metrics" / "online" / name / "eval.json").read_text())
        assert evaluation["from"] == start
        lo, hi = evaluation["gold_accuracy_round_ci95"]
        assert lo <= evaluation["gold_accuracy_round"] <= hi
        assert isinstance(evaluation["reward_hacking"], bool)
    # round 1's evaluation of its starting policy is the offline DPO model's own gold accuracy on the same prompts
    offline = json.loads((repo / "metrics" / "eval.json").read_text())
    round1 = json.loads((repo / "metrics" / "online" / "round1" / "eval.json").read_text())
    assert round1["gold_accuracy_previous"] == offline["gold_accuracy_dpo"]
    assert round1["gold_accuracy_sft"] == offline["gold_accuracy_sft"]


@pytest.mark.slow
def test_adding_a_round_runs_only_that_round_and_a_killed_round_resumes(two_rounds, tmp_path):
    repo, _ = two_rounds
    work = copy_repo(repo, tmp_path / "three")
    set_rounds(work, {**ROUNDS, "round3": {"from": "round2"}})
    git("commit", "-qam", "a third round", cwd=work)
    repro = dvc("repro", cwd=work)
    assert ran(repro) == {"online@round3", "evaluate_round@round3"}, output(repro)
    straight = yaml.safe_load((work / "dvc.lock").read_text())["stages"]["online@round3"]

    killed = copy_repo(repo, tmp_path / "killed")
    set_rounds(killed, {**ROUNDS, "round3": {"from": "round2"}})
    params = read_params(killed)
    params["checkpoints"]["every_steps"] = 1  # not a dependency: the round's outputs are the same
    (killed / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = Background(["repro", "online@round3"], killed)
    assert run.wait_for("dpo: epoch 1:") is not None, run.text
    assert run.kill_tree() is not None and "dpo: epoch 2:" not in run.text, run.text
    again = dvc("repro", "online@round3", cwd=killed)
    assert "resuming from checkpoint" in output(again), output(again)
    resumed = yaml.safe_load((killed / "dvc.lock").read_text())["stages"]["online@round3"]
    assert resumed["outs"] == straight["outs"]
