import random

"""preftune.data.task: the built-in grammar-tutor generator and its gold checker."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from preftune.data import task
from preftune.data.gold import is_correct

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
NOISE = PARAMS["data"]["tutor_noise"]
KINDS = PARAMS["data"]["rejected_kinds"]


@pytest.fixture(scope="module")
def generated():
    """The default sizes and seed of params.yaml."""
    return task.generate(42, 200, 4000, 500, NOISE, KINDS)


# --- determinism ---------------------------------------------------------------------------------------

def test_same_seed_same_output_other_seed_other_output():
    a = task.generate(42, 60, 200, 50, NOISE, KINDS)
    b = task.generate(42, 60, 200, 50, NOISE, KINDS)
    c = task.generate(43, 60, 200, 50, NOISE, KINDS)
    assert a == b
    for name in ("pairs", "sft", "gold"):
        assert a[name] != c[name]


def _prepare(workdir: Path, seed: int) -> dict[str, bytes]:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["seed"] = seed
    params["data"].update(source="grammar", pairs=60, heldout=10, sft_demos=200, gold_prompts=50,
                          validation_prompts=20, judge_pairs=30)
    workdir.mkdir()
    (workdir / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    done = subprocess.run([sys.executable, str(REPO / "stages" / "prepare.py"), "--params", "params.yaml"],
                          cwd=workdir, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    prepared = workdir / "data" / "prepared"
    files = sorted([*prepared.glob("*.jsonl"), *(prepared / "checks").iterdir()]) + [workdir / "metrics" / "prepare.json"]
    return {str(f.relative_to(workdir)): f.read_bytes() for f in files}


def test_prepare_files_are_byte_identical_for_the_same_seed(tmp_path):
    first, second = _prepare(tmp_path / "a", 42), _prepare(tmp_path / "b", 42)
    assert sorted(first) == ["data/prepared/checks/README.md", "data/prepared/checks/gold.jsonl",
                             "data/prepared/checks/judge.jsonl", "data/prepared/checks/validation.jsonl",
                             "data/prepared/heldout.jsonl", "data/prepared/sft.jsonl", "data/prepared/train.jsonl",
                             "metrics/prepare.json"]
    assert first == second
    other = _prepare(tmp_path / "c", 43)
    for name in ("checks/gold.jsonl", "heldout.jsonl", "sft.jsonl", "train.jsonl", "checks/validation.jsonl",
                 "checks/judge.jsonl"):
        assert other[f"data/prepared/{name}"] != first[f"data/prepared/{name}"], name


# --- the gold checker ----------------------------------------------------------------------------------

# Written by hand: category -> (correct, uncorrected, bad fix)
CHECKER_CASES = {
    "agreement": ("My sister eats an apple every day.",
                  "My sister eat an apple every day.",
                  "My sister eating an apple every day."),
    "past_tense": ("Yesterday Tom bought a red car.",
                   "Yesterday Tom buyed a red car.",
                   "Yesterday Tom buys a red car."),
    "article": ("She found an umbrella at the station.",
                "She found a umbrella at the station.",
                "She found the an umbrella at the station."),
    "plural": ("My parents bought three boxes last week.",
               "My parents bought three box last week.",
               "My parents bought three boxs last week."),
    "pronoun": ("Anna and I visited a museum last summer.",
                "Anna and me visited a museum last summer.",
                "Anna and my visited a museum last summer."),
    "comparative": ("My brother is taller than a farmer.",
                    "My brother is more tall than a farmer.",
                    "My brother is more taller than a farmer."),
}


def test_checker_cases_cover_every_category():
    assert set(CHECKER_CASES) == set(task.CATEGORIES)


@pytest.mark.parametrize("category", sorted(CHECKER_CASES))
def test_checker_accepts_the_correct_sentence(category):
    correct = CHECKER_CASES[category][0]
    record = {"correct": correct}
    for response in (correct, " " + correct, correct + "\n", " " + correct + "\n", "  " + correct + "  \n"):
        assert is_correct(record, response), repr(response)


@pytest.mark.parametrize("category", sorted(CHECKER_CASES))
def test_checker_rejects_wrong_answers(category):
    correct, uncorrected, bad_fix = CHECKER_CASES[category]
    record = {"correct": correct}
    wrong = [
        uncorrected, " " + uncorrected + "\n",
        bad_fix, " " + bad_fix + "\n",
        f" Sure, here it is: {correct}",
        f" {correct} I hope this helps.",
        f" Sure, let me help. {correct} Keep practising.",
        correct.rstrip("."),  # no full stop
        correct.lower(),
        "", " ", "\n",
    ]
    for response in wrong:
        assert not is_correct(record, response), repr(response)


def test_checker_reads_only_the_correct_field():
    record = {"correct": "She goes home.", "chosen": " She go home."}
    assert is_correct(record, " She goes home.")
    assert not is_correct(record, " She go home.")


# --- word forms ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("word, article", [("hour", "an"), ("university", "a"), ("apple", "an"), ("dog", "a"),
                                           ("Hour", "an"), ("umbrella", "an"), ("uniform", "a"),
                                           ("honest", "an")])
def test_article_for_follows_the_sound(word, article):
    assert task.article_for(word) == article


@pytest.mark.parametrize("noun, plural", [("dog", "dogs"), ("apple", "apples"),  # regular
                                          ("box", "boxes"), ("watch", "watches"), ("dish", "dishes"),  # -es
                                          ("city", "cities"), ("baby", "babies"),  # -ies
                                          ("key", "keys"), ("toy", "toys"),  # vowel + y: just -s
                                          ("child", "children"), ("mouse", "mice"), ("knife", "knives"),
                                          ("sheep", "sheep"), ("potato", "potatoes")])  # irregular
def test_plural_of(noun, plural):
    correct, learner = task.plural_of(noun)
    assert correct == plural
    assert learner != plural


# --- structure of the generated data -------------------------------------------------------------------

def test_pairs_chosen_passes_the_checker_and_rejected_fails(generated):
    for pair in generated["pairs"]:
        assert is_correct(pair, pair["chosen"]), pair
        assert not is_correct(pair, pair["rejected"]), pair
        assert pair["prompt"].startswith("Fix the grammar: ") and pair["prompt"].endswith("\nAnswer:")
        assert pair["chosen"] == " " + pair["correct"]


def test_all_categories_appear_in_every_set(generated):
    assert len(task.CATEGORIES) >= 6
    for name in ("pairs", "sft", "gold"):
        counts = Counter(r["category"] for r in generated[name])
        assert set(counts) == set(task.CATEGORIES), name
        assert max(counts.values()) - min(counts.values()) <= 1, (name, counts)  # equal shares


def test_sentences_have_4_to_14_words(generated):
    for name in ("pairs", "sft", "gold"):
        for row in generated[name]:
            assert 4 <= len(row["correct"].split()) <= 14, row["correct"]


def test_vocabulary_size():
    vocab = task.vocabulary()
    assert len(vocab) >= 300
    assert {"apple", "apples", "children", "bought", "taller"} <= vocab


def test_no_sentence_shared_between_sets(generated):
    sentences = {name: [r["correct"] for r in generated[name]] for name in ("pairs", "sft", "gold")}
    for name, rows in sentences.items():
        assert len(rows) == len(set(rows)), f"repeated sentence within {name}"
    assert not set(sentences["pairs"]) & set(sentences["sft"])
    assert not set(sentences["pairs"]) & set(sentences["gold"])
    assert not set(sentences["sft"]) & set(sentences["gold"])
    prompts = {name: {r["prompt"] for r in generated[name]} for name in ("pairs", "sft", "gold")}
    assert not prompts["gold"] & (prompts["pairs"] | prompts["sft"])


def test_every_rejected_kind_appears(generated):
    """Every kind with a weight in params.yaml appears (the default gives rambling no weight)."""
    kinds = Counter(p["rejected_kind"] for p in generated["pairs"])
    weighted = {task.HABITS[c] for c in task.CATEGORIES} if KINDS.get("habit") else set()
    weighted |= {k for k in task.ANSWER_KINDS if KINDS.get(k)}
    assert set(kinds) == weighted
    every = task.generate(42, 200, 0, 0, NOISE, {k: 1.0 for k in ("habit",) + task.ANSWER_KINDS})["pairs"]
    assert {p["rejected_kind"] for p in every} == set(task.ANSWER_KINDS)


def test_validation_prompts_and_judge_pairs_are_fresh_and_leave_the_other_sets_alone():
    """Validation prompts and fresh judge pairs share no sentence with any other set, and adding them changes
    none of the sets drawn before them (pairs, SFT, gold)."""
    without = task.generate(42, 60, 200, 50, NOISE, KINDS)
    with_them = task.generate(42, 60, 200, 50, NOISE, KINDS, n_validation=40, n_judge=80)
    for name in ("pairs", "sft", "gold"):
        assert with_them[name] == without[name], name
    assert len(with_them["validation"]) == 40 and len(with_them["judge"]) == 80
    correct = {name: {r["correct"] for r in with_them[name]} for name in ("pairs", "sft", "gold", "validation", "judge")}
    for a in correct:
        for b in correct:
            if a < b:
                assert not correct[a] & correct[b], (a, b)


def test_habit_rejected_answers_are_the_tutors_habit():
    pairs = task.generate(42, 60, 0, 0, NOISE, {"habit": 1.0})["pairs"]
    for pair in pairs:
        assert pair["rejected_kind"] == task.HABITS[pair["category"]]
        assert not is_correct(pair, pair["rejected"])


def test_sft_noise_rate_per_category():
    noise = {c: 0.0 for c in task.CATEGORIES}
    noise.update(article=0.65, plural=0.65)
    sft = task.generate(7, 0, 6000, 0, noise, KINDS)["sft"]  # 1000 demonstrations per category
    for category in task.CATEGORIES:
        rows = [r for r in sft if r["category"] == category]
        assert len(rows) == 1000
        wrong = [r for r in rows if not is_correct(r, r["response"])]
        assert all(r["tutor_kind"] == task.HABITS[category] for r in wrong)
        assert all(r["tutor_kind"] == "correct" for r in rows if r not in wrong)
        share = len(wrong) / len(rows)
        if noise[category]:
            assert abs(share - 0.65) <= 0.1, (category, share)
        else:
            assert share == 0, (category, share)


def test_sft_without_noise_is_all_correct():
    sft = task.generate(3, 0, 600, 0, {c: 0.0 for c in task.CATEGORIES}, KINDS)["sft"]
    assert all(is_correct(r, r["response"]) and r["tutor_kind"] == "correct" for r in sft)


def test_unknown_tutor_noise_category_is_refused():
    with pytest.raises(Exception, match="artikle"):  # ValueError today; a ConfigError would do too
        task.generate(42, 6, 6, 6, {"artikle": 0.5}, KINDS)


# --- every learner sentence has exactly one error ---------------------------------------------------------

def test_learner_error_forms_differ_from_the_correct_form():
    """A slot's learner errors must never be its correct form, or the 'learner sentence' has no error."""
    same = []
    for verb in task.VERBS:
        slot = task.past_slot(verb)
        if slot.correct in slot.errors or slot.bad_fix == slot.correct:
            same.append(f"past_slot({verb!r}): correct {slot.correct!r}, errors {slot.errors}")
    rng = random.Random(0)
    for _ in range(3000):  # "two sheep" would need no correction: the generator must never make that slot
        for part in task.noun_phrase(rng, list(task.NOUNS)):
            if isinstance(part, task.Slot) and part.category == "plural" and part.correct in part.errors:
                same.append(f"plural slot {part}")
    assert not same, "learner error equals the correct form:\n" + "\n".join(same)


def test_every_prompt_has_an_error(generated):
    no_error = [r["prompt"] for name in ("pairs", "sft", "gold") for r in generated[name]
                if r["prompt"] == task.PROMPT_TEMPLATE.format(sentence=r["correct"])]
    assert not no_error, f"{len(no_error)} prompts are already correct, e.g. {no_error[:3]}"


def test_generate_does_not_crash_for_any_seed():
    crashed = []
    for seed in range(10):
        try:
            task.generate(seed, 200, 0, 0, NOISE, KINDS)
        except AssertionError as err:
            crashed.append(f"seed {seed}: {err}")
    assert not crashed, "generate() raised for seeds:\n" + "\n".join(crashed)
