"""evaluate.judge: the pairwise template and its strict reading, both answer orders, and each kind of judge with
real components: a reward model saved to a folder, a judge LLM behind a real OpenAI-compatible HTTP server on
127.0.0.1 (tests/chat_server.py) answering with a real local model or with a fixed habit, and the one-line refusals
of a judge that cannot judge."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from dvc_helpers import ROOT, free_port, wait_for_port

from preftune.judging import judges
from preftune.judging.judges import OpenAIChat, PairwiseJudge, RewardJudge, load_judge
from preftune.judging.pairwise import Template, combine, position_consistency
from preftune.judging.win_rates import verdict_summary
from preftune.model.reward_model import load_reward_model
from preftune.pipeline.errors import ConfigError, UserError

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
CPU = torch.device("cpu")
PROMPTS = ["user: she go home\nassistant:", "user: he have two cat\nassistant:", "user: they was late\nassistant:"]
DPO = [" She goes home.", " He has two cats.", " They were late."]
SFT = [" She go home.", " He has two cats.", " They was late!"]


def template(tmp_path: Path, **changes) -> Template:
    spec = {**yaml.safe_load((ROOT / "judges" / "alpaca_eval.yaml").read_text()), **changes}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(spec))
    return Template.load(str(path))


# --- the template and its strict reading ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["alpaca_eval.yaml", "mt_bench.yaml"])
def test_the_shipped_templates_load_and_show_the_judge_both_answers(name):
    t = Template.load(str(ROOT / "judges" / name))
    chat = t.messages("fix: she go home", "ANSWER-ONE", "ANSWER-TWO")
    text = "\n".join(m["content"] for m in chat)
    assert "fix: she go home" in text and text.index("ANSWER-ONE") < text.index("ANSWER-TWO")
    assert chat[-1]["role"] == "user"


@pytest.mark.parametrize("user, missing", [("Say A or B: {output_a}", "{instruction}, {output_b}"),
                                           ("{instruction} {output_a}", "{output_b}")])
def test_a_template_without_the_answer_slots_is_one_line(tmp_path, user, missing):
    with pytest.raises(ConfigError) as err:
        template(tmp_path, user=user)
    assert str(err.value) == (f"{tmp_path / 't.yaml'}: the prompt lacks the answer slots {missing}; the judge must see "
                              "the instruction and both answers: add them to user (params.yaml "
                              "evaluate.judge_template names this file)")


@pytest.mark.parametrize("changes, says", [({"user": "{instruction} {output_a} {output_b} {score}"}, "unknown slots"),
                                           ({"verdicts": {"a": "A"}}, "verdicts must map a and b"),
                                           ({"verdicts": {"a": "A", "b": "A"}}, "distinct"),
                                           ({"match": "fuzzy"}, "match: 'fuzzy' must be one of"),
                                           ({"max_new_tokens": 0}, "max_new_tokens must be")])
def test_a_broken_template_is_one_line(tmp_path, changes, says):
    with pytest.raises(ConfigError, match=says) as err:
        template(tmp_path, **changes)
    assert "\n" not in str(err.value)


def test_a_missing_template_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="evaluate.judge_template: no file"):
        Template.load(str(tmp_path / "none.yaml"))


@pytest.mark.parametrize("match, answer, verdict", [
    ("exact", "A", "a"), ("exact", "  B\n", "b"), ("exact", "A.", None), ("exact", "Answer A", None),
    ("first_word", "A: because", "a"), ("first_word", "B.", "b"), ("first_word", "The answer is A", None),
    ("first_word", "", None), ("first_word", "AB", None),
])
def test_exact_and_first_word_readings(tmp_path, match, answer, verdict):
    assert template(tmp_path, match=match).parse(answer) == verdict


@pytest.mark.parametrize("answer, verdict", [("A is clearer. [[A]]", "a"), ("Equal. [[C]]", "tie"),
                                             ("[[A]] no wait [[B]]", None), ("[[B]] ... [[B]]", None),
                                             ("I cannot decide.", None)])
def test_a_marker_must_appear_once_and_alone(answer, verdict):
    assert Template.load(str(ROOT / "judges" / "mt_bench.yaml")).parse(answer) == verdict


def test_the_two_orders_combine_as_mt_bench_does():
    assert combine("a", "b") == "a"  # first shown as A won, then as B won: it wins
    assert combine("b", "a") == "b"
    assert combine("a", "a") == "tie"  # the verdict followed the position, not the answer
    assert combine("tie", "tie") == "tie"
    assert combine("a", None) is None and combine(None, "b") is None  # unreadable: unjudged, not guessed
    records = [{"readings": [{"verdict": "a"}, {"verdict": "b"}]}, {"readings": [{"verdict": "a"}, {"verdict": "a"}]},
               {"readings": [{"verdict": None}, {"verdict": "a"}]}, {"verdict": "tie", "identical": True},
               {"verdict": "b", "rewards": [0.1, 0.3]}]
    assert position_consistency(records) == 2 / 3  # the consistent pair, the reward record; not the rest


# --- a judge with a fixed habit -------------------------------------------------------------------------------

def test_a_judge_that_always_prefers_the_first_answer_gives_ties_not_wins(tmp_path):
    """Always "A": every verdict flips with the order, so every non-identical comparison is a tie, position
    consistency is 0, and the win rate is 0 (0.5 with ties as half), not 1 or a coin."""
    judge = PairwiseJudge("llm:habit", lambda chats, n, desc: ["A"] * len(chats), template(tmp_path))
    records = judge.compare(PROMPTS, DPO, SFT, ([True] * 3, [True] * 3), "test")
    assert [r["verdict"] for r in records] == ["tie", "tie", "tie"]
    assert records[1] == {"verdict": "tie", "identical": True} and judge.calls == 4  # identical: not asked
    assert position_consistency(records) == 0.0
    summary = verdict_summary([r["verdict"] for r in records])
    assert (summary["wins"], summary["ties"], summary["win_rate"], summary["win_rate_ties_half"]) == (0, 3, 0.0, 0.5)


def test_a_judge_that_reads_the_answers_is_consistent(tmp_path):
    def prefers_goes(chats, n, desc):  # picks whichever answer says "goes"/"were", wherever it is shown
        return ["A" if any(w in c[-1]["content"].split("Answer B:")[0].split("Answer A:")[1] for w in ("goes", "were"))
                else "B" for c in chats]
    judge = PairwiseJudge("llm:reader", prefers_goes, template(tmp_path))
    records = judge.compare(PROMPTS, DPO, SFT, ([True] * 3, [True] * 3), "test")
    assert [r["verdict"] for r in records] == ["a", "tie", "a"] and position_consistency(records) == 1.0
    pairs = judge.pairs([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(PROMPTS, DPO, SFT)], "pairs")
    assert [r["verdict"] for r in pairs] == ["a", "tie", "a"]


# --- a reward model of the user's -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory, base_model, tok):
    """The tiny scratch GPT-2 saved as a causal LM, and as a one-score sequence classifier."""
    root = tmp_path_factory.mktemp("judges")
    base_model.save_pretrained(root / "causal")
    tok.save_pretrained(root / "causal")
    torch.manual_seed(0)
    rm = load_reward_model(str(root / "causal"))
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    return root


def judge_cfg(spec: str, **more) -> dict:
    return {**PARAMS["evaluate"], "judge": spec, "judge_template": str(ROOT / "judges" / "alpaca_eval.yaml"), **more}


def test_a_reward_model_from_a_folder_judges_by_its_scores(saved):
    judge = load_judge(judge_cfg(f"rm:{saved / 'rm'}"), {**PARAMS["model"], "max_length": 64}, CPU)
    assert isinstance(judge, RewardJudge)
    records = judge.compare(PROMPTS, DPO, SFT, ([True] * 3, [True] * 3), "test")
    for r in records:
        a, b = r["rewards"]
        assert r["verdict"] == ("a" if a > b else "b" if b > a else "tie")
    assert records[1]["verdict"] == "tie"  # identical answers, whatever their scores
    again = load_judge(judge_cfg(f"rm:{saved / 'rm'}"), {**PARAMS["model"], "max_length": 64}, CPU)
    assert again.compare(PROMPTS, DPO, SFT, ([True] * 3, [True] * 3), "test") == records  # saved and loaded back


def test_a_causal_lm_is_not_a_reward_model(saved):
    with pytest.raises(ConfigError) as err:
        load_judge(judge_cfg(f"rm:{saved / 'causal'}"), PARAMS["model"], CPU)
    assert str(err.value) == (f"params.yaml: evaluate.judge: rm:{saved / 'causal'} is not a sequence-classification "
                              "reward model (its config says GPT2LMHeadModel); give a reward model, or judge with a "
                              f"causal LM as evaluate.judge: llm:{saved / 'causal'}")


def test_a_local_judge_llm_answers_and_is_read_strictly(saved, tmp_path):
    judge = load_judge(judge_cfg(f"llm:{saved / 'causal'}", batch_size=2), PARAMS["model"], CPU)
    records = judge.compare(PROMPTS, DPO, SFT, ([True] * 3, [True] * 3), "test")
    assert judge.calls == 4 and records[1] == {"verdict": "tie", "identical": True}
    for r in (records[0], records[2]):
        assert len(r["readings"]) == 2 and all(isinstance(x["answer"], str) for x in r["readings"])
        assert r["verdict"] == combine(*(x["verdict"] for x in r["readings"]))


# --- a judge LLM behind an OpenAI-compatible server ---------------------------------------------------------

@pytest.fixture
def server(saved):
    procs = []

    def start(*args) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "chat_server.py"), "--port", str(port),
                                 "--key", "test-key", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        wait_for_port(port, proc, timeout=120)
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_an_openai_compatible_server_with_a_real_model_judges(server, saved, monkeypatch):
    url = server("--model", str(saved / "causal"))
    monkeypatch.setenv(judges.KEY_ENV, "test-key")
    judge = load_judge(judge_cfg("openai:test-judge", judge_base_url=url), PARAMS["model"], CPU)
    records = judge.compare(PROMPTS, DPO, SFT, ([True] * 3, [True] * 3), "test")
    assert judge.calls == 4
    for r in (records[0], records[2]):  # what the model said, kept, and read by the template's rule
        assert [x["verdict"] for x in r["readings"]] == [judge.template.parse(x["answer"]) for x in r["readings"]]


def test_a_position_biased_judge_behind_a_server_gives_consistency_0(server, monkeypatch):
    url = server("--reply", "A")
    monkeypatch.setenv(judges.KEY_ENV, "test-key")
    judge = load_judge(judge_cfg("openai:test-judge", judge_base_url=url), PARAMS["model"], CPU)
    records = judge.compare(PROMPTS, DPO, SFT, ([True] * 3, [True] * 3), "test")
    assert [r["verdict"] for r in records] == ["tie"] * 3 and position_consistency(records) == 0.0


def test_a_wrong_key_or_model_name_is_one_line(server, monkeypatch):
    url = server("--reply", "A")
    monkeypatch.setenv(judges.KEY_ENV, "wrong")
    chat = OpenAIChat("test-judge", url)  # reachable: /models refused with 401 still answers
    with pytest.raises(UserError, match=r"refused the request \(HTTP 401: .*Incorrect API key"):
        chat([[{"role": "user", "content": "hi"}]], 4, "test")
    monkeypatch.setenv(judges.KEY_ENV, "test-key")
    with pytest.raises(UserError, match=r"HTTP 404: .*does not exist"):
        OpenAIChat("no-such-model", url)([[{"role": "user", "content": "hi"}]], 4, "test")


# --- refusals from the command line: one line, nothing written ----------------------------------------------

def run_judge_stage(tmp_path: Path, env: dict, **evaluate) -> subprocess.CompletedProcess:
    params = {**PARAMS, "evaluate": {**PARAMS["evaluate"], **evaluate}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(ROOT / "judges", tmp_path / "judges")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    # cores of its own (cores.py waits, with a log line, while other stages hold the machine's)
    env = {**env, "TMPDIR": tempfile.mkdtemp()}
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "judge.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    return done


def test_a_missing_api_key_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != judges.KEY_ENV}
    done = run_judge_stage(tmp_path, env, judge="openai:gpt-4o")
    assert done.stderr == ("judge: error: params.yaml: evaluate.judge: openai:gpt-4o: the API key is read from "
                           "$OPENAI_API_KEY, which is not set; export it (a local server that needs none takes any "
                           "value: export OPENAI_API_KEY=none)\n")


def test_an_unreachable_server_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    done = run_judge_stage(tmp_path, {**os.environ, judges.KEY_ENV: "k"}, judge="openai:m", judge_base_url=url)
    assert done.stderr.startswith(f"judge: error: params.yaml: evaluate.judge: openai:m: cannot reach {url} (")
    assert done.stderr.endswith("); start the server or set evaluate.judge_base_url\n")


def test_a_template_without_slots_stops_the_stage(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"user": "Which is better?", "verdicts": {"a": "A", "b": "B"},
                                                       "match": "exact", "max_new_tokens": 2}))
    done = run_judge_stage(tmp_path, {**os.environ, judges.KEY_ENV: "k"}, judge="openai:m", judge_template="bad.yaml")
    assert done.stderr.startswith("judge: error: bad.yaml: the prompt lacks the answer slots {instruction}, "
                                  "{output_a}, {output_b}")


def test_a_judge_spec_of_no_known_kind_is_refused_by_the_schema(tmp_path):
    done = run_judge_stage(tmp_path, dict(os.environ), judge="gpt-4o")
    assert done.stderr == ("judge: error: params.yaml: evaluate.judge: 'gpt-4o' must be reward, rm:<model>, "
                           "llm:<model> or openai:<model>; fix the value\n")


def test_a_judge_whose_every_answer_is_unreadable_gives_no_win_rate_not_a_guess(caplog):
    """evaluate counts what could not be read and reports no rate, rather than a tie or a coin."""
    import evaluate

    judged = evaluate.Judged([{"prompt": p} for p in PROMPTS], {"sft": SFT, "dpo": DPO},
                             [{"verdict": None, "readings": [{"answer": "Hmm", "verdict": None}] * 2}] * 3)
    with caplog.at_level("WARNING", logger="evaluate"):
        metrics = evaluate.heldout_metrics(judged, seed=0)
    assert (metrics["n"], metrics["wins"], metrics["win_rate"], metrics["lc_win_rate"]) == (0, 0, None, None)
    assert "none of the judge's answers on the 3 held-out prompts could be read" in caplog.text
