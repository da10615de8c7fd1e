"""preftune.data.formats: every file format gives the same rows; every bad input gives one actionable line."""

import sys
from pathlib import Path

import pandas as pd
import pytest

from preftune.data.formats import load_pairs, normalize_rows, render_plain
from preftune.pipeline.errors import DataError, UserError

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"

# What tests/fixtures/datasets/pairs.* hold (their extra "id" column must be dropped).
PAIRS = [
    {
        "prompt": "Fix the grammar: she go to school every day.",
        "chosen": "She goes to school every day.",
        "rejected": "She go to school every day.",
    },
    {
        "prompt": 'Fix the grammar: "Me and him is friends," he said.',
        "chosen": '"He and I are friends," he said.',
        "rejected": '"Me and him are friends," he said.',
    },
    {
        "prompt": "Fix the grammar in each line:\n1. They was late to the café.\n2. It do work.",
        "chosen": "1. They were late to the café.\n2. It does work.",
        "rejected": "1. They was late to the café.\n2. It does work.",
    },
]


# --- formats -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pairs.yaml", "pairs.jsonl", "pairs.json", "pairs.csv"])
def test_text_formats_give_the_same_rows(name):
    assert load_pairs(FIXTURES / name) == PAIRS


def test_parquet_gives_the_same_rows(tmp_path):
    path = tmp_path / "pairs.parquet"
    pd.DataFrame([{"id": f"g{i}", **row} for i, row in enumerate(PAIRS, 1)]).to_parquet(path)
    assert load_pairs(path) == PAIRS


def test_yml_extension_and_explicit_format(tmp_path):
    yml = tmp_path / "pairs.yml"
    yml.write_text((FIXTURES / "pairs.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    txt = tmp_path / "pairs.txt"
    txt.write_text((FIXTURES / "pairs.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    assert load_pairs(yml) == PAIRS
    assert load_pairs(txt, fmt="jsonl") == PAIRS
    assert load_pairs(str(FIXTURES / "pairs.json"), fmt="JSON") == PAIRS


def test_csv_with_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffprompt,chosen,rejected\nFix: he go.,He goes.,He go.\n".encode("utf-8"))
    assert load_pairs(path) == [{"prompt": "Fix: he go.", "chosen": "He goes.", "rejected": "He go."}]


# --- implicit prompt ---------------------------------------------------------------------------------

def test_implicit_prompt_is_the_shared_prefix_cut_at_whitespace():
    assert load_pairs(FIXTURES / "implicit.jsonl") == [
        # The shared prefix ends inside "go|es": the cut goes back to the space before it.
        {"prompt": "Fix the grammar: she go home.\nAnswer: She", "chosen": " goes home.", "rejected": " go home."},
        # The shared prefix ends with a newline: it moves to the responses.
        {"prompt": 'Is "they was" correct?', "chosen": '\nNo, it should be "they were".', "rejected": "\nYes."},
    ]


def test_implicit_prompt_rows_rejoin_to_the_original_text():
    rows = [{"chosen": "Q: fix it\nA: It is fixed.", "rejected": "Q: fix it\nA: It are fixed."}]
    [pair] = normalize_rows(rows, "mem")
    assert pair["prompt"] + pair["chosen"] == rows[0]["chosen"]
    assert pair["prompt"] + pair["rejected"] == rows[0]["rejected"]


# --- conversational ----------------------------------------------------------------------------------

def texts(rows: list[dict]) -> list[dict]:
    """Rows without the messages that conversational rows keep for prepare's turn dropping."""
    return [{k: v for k, v in row.items() if k != "messages"} for row in rows]


def test_conversational_with_the_plain_template():
    rows = load_pairs(FIXTURES / "conversational.jsonl")
    assert rows[0]["messages"]["prompt"] == [{"role": "system", "content": "You fix grammar."},
                                             {"role": "user", "content": "she go home"}]
    assert rows[0]["messages"]["chosen"] == [{"role": "assistant", "content": "She goes home."}]
    assert texts(rows) == [
        {
            "prompt": "system: You fix grammar.\nuser: she go home\nassistant:",
            "chosen": " She goes home.\n",
            "rejected": " She go home.\n",
        },
        {"prompt": "user: they was late\nassistant:", "chosen": " They were late.\n", "rejected": " They was late.\n"},
    ]


def test_plain_template_prompt_plus_response_is_the_whole_conversation():
    prompt = [{"role": "user", "content": "she go home"}]
    answer = [{"role": "assistant", "content": "She goes home."}]
    [pair] = normalize_rows([{"prompt": prompt, "chosen": answer, "rejected": [{"role": "assistant", "content": "No."}]}], "mem")
    assert pair["prompt"] + pair["chosen"] == render_plain(prompt + answer, False)
    assert pair["chosen"] == " She goes home.\n"


def chatml(messages, add_generation_prompt):
    """A stand-in for a tokenizer's chat template: an assistant turn starts with the generation prompt's tag."""
    text = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
    return text + ("<|assistant|>" if add_generation_prompt else "")


def test_conversational_with_a_custom_template():
    rows = load_pairs(FIXTURES / "conversational.jsonl", render_messages=chatml)
    assert texts(rows) == [
        {
            "prompt": "<|system|>You fix grammar.<|end|><|user|>she go home<|end|><|assistant|>",
            "chosen": "She goes home.<|end|>",
            "rejected": "She go home.<|end|>",
        },
        {"prompt": "<|user|>they was late<|end|><|assistant|>", "chosen": "They were late.<|end|>",
         "rejected": "They was late.<|end|>"},
    ]


def test_template_whose_generation_prompt_is_not_a_prefix():
    def adds_a_newline(messages, add_generation_prompt):
        return chatml(messages, add_generation_prompt) + ("\n" if add_generation_prompt else "")

    with pytest.raises(DataError, match=r"conversational\.jsonl: row 1: field 'chosen': the chat template"):
        load_pairs(FIXTURES / "conversational.jsonl", render_messages=adds_a_newline)


# --- LLaMA-Factory layouts -----------------------------------------------------------------------------

def test_sharegpt_rows_become_conversations_with_their_system_messages():
    rows = load_pairs(FIXTURES / "sharegpt.json")
    assert len(rows) == 12  # duplicates are prepare's business (data.duplicates)
    assert texts(rows)[0] == {"prompt": "user: Fix the grammar: she go to school.\nassistant:",
                              "chosen": " She goes to school.\n", "rejected": " She go to school.\n"}
    assert rows[1]["messages"]["prompt"] == [
        {"role": "system", "content": "You are a patient English tutor."},
        {"role": "user", "content": "Is 'they was late' correct?"},
        {"role": "assistant", "content": "No, it should be 'they were late'."},
        {"role": "user", "content": "And 'he don't know'?"}]
    assert rows[2]["prompt"].startswith("system: Answer in one sentence.\nuser: What is the plural")


def test_alpaca_rows_join_instruction_and_input():
    rows = load_pairs(FIXTURES / "alpaca.json", render_messages=chatml)
    assert texts(rows)[0] == {"prompt": "<|user|>Fix the grammar.\nshe go home<|end|><|assistant|>",
                              "chosen": "She goes home.<|end|>", "rejected": "She go home.<|end|>"}
    assert rows[1]["prompt"] == "<|system|>Answer with one word.<|end|><|user|>Give the past tense of 'go'.<|end|><|assistant|>"


@pytest.mark.parametrize("row, field, problem", [
    ({"conversations": [{"from": "human", "value": "hi"}], "chosen": {"from": "human", "value": "a"},
      "rejected": {"from": "gpt", "value": "b"}}, "chosen", "expected an answer from 'gpt'"),
    ({"conversations": [{"from": "observation", "value": "hi"}], "chosen": {"from": "gpt", "value": "a"},
      "rejected": {"from": "gpt", "value": "b"}}, "conversations[1]", "unsupported 'from' 'observation'"),
    ({"conversations": [], "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}},
     "conversations", "non-empty list"),
    ({"conversations": [{"from": "human", "value": "hi"}], "chosen": "a", "rejected": {"from": "gpt", "value": "b"}},
     "chosen", "expected {from, value}"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
      "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}},
     "prompt", "ends with an assistant message"),
    ({"instruction": 3, "chosen": "a", "rejected": "b"}, "instruction", "expected text"),
    ({"instruction": "Fix it.", "input": "x", "chosen": "", "rejected": "b"}, "chosen", "message 1"),
])
def test_bad_llama_factory_rows(row, field, problem):
    with pytest.raises(DataError) as caught:
        normalize_rows([row], "f.json")
    assert str(caught.value).startswith(f"f.json: row 1: field '{field}': ") and problem in str(caught.value)
    assert "\n" not in str(caught.value)


def test_conversational_parquet(tmp_path):
    path = tmp_path / "chat.parquet"
    pd.DataFrame([{
        "prompt": [{"role": "user", "content": "she go home"}],
        "chosen": [{"role": "assistant", "content": "She goes home."}],
        "rejected": [{"role": "assistant", "content": "She go home."}],
    }]).to_parquet(path)
    assert texts(load_pairs(path)) == [{"prompt": "user: she go home\nassistant:", "chosen": " She goes home.\n",
                                 "rejected": " She go home.\n"}]


# --- bad rows: "<file>: row <n>: field '<field>': <what>; <fix>" -------------------------------------

BAD_ROWS = [
    ("missing.yaml", "- {prompt: p1, chosen: a, rejected: b}\n- {prompt: p2, chosen: a}\n",
     2, "rejected", "missing"),
    ("empty.jsonl", '{"prompt": "p", "chosen": "", "rejected": "b"}\n', 1, "chosen", "empty"),
    ("blank.csv", "prompt,chosen,rejected\np1,a,b\n   ,a,b\n", 2, "prompt", "whitespace"),
    ("short_line.csv", "prompt,chosen,rejected\np1,a\n", 1, "rejected", "empty"),
    ("number.yaml", "- {prompt: p, chosen: 42, rejected: b}\n", 1, "chosen", "got int 42"),
    ("null.json", '[{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": null}]',
     2, "rejected", "null"),
    ("identical.jsonl", '{"prompt": "p", "chosen": "same", "rejected": "same"}\n', 1, "rejected", "identical to 'chosen'"),
    ("no_prefix.jsonl", '{"chosen": "Yes, it is.", "rejected": "No."}\n', 1, "prompt", "add a prompt column"),
    ("one_word.jsonl", '{"chosen": "Goes", "rejected": "Go"}\n', 1, "prompt", "no shared prompt prefix"),
    ("nothing_left.jsonl", '{"chosen": "Q: hi\\n", "rejected": "Q: hi\\nHello"}\n', 1, "chosen", "after the shared prompt"),
    ("bad_message.jsonl",
     '{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant"}], '
     '"rejected": [{"role": "assistant", "content": "no"}]}\n', 1, "chosen", "message 1"),
    ("mixed.jsonl",
     '{"prompt": "hi", "chosen": [{"role": "assistant", "content": "yes"}], "rejected": "no"}\n',
     1, "prompt", "list of messages"),
    ("no_shared_turns.jsonl",
     '{"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], '
     '"rejected": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}\n',
     1, "prompt", "no shared prompt prefix"),
]


def assert_one_line_error(path, text, prefix, problem):
    """Loading `text` from `path` fails with one line: where (prefix), what (problem), and what to do (after '; ')."""
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_pairs(path)
    message = str(caught.value)
    assert message.startswith(prefix)
    assert problem in message
    assert "; " in message and "\n" not in message


@pytest.mark.parametrize("name, text, row, field, problem", BAD_ROWS, ids=[case[0] for case in BAD_ROWS])
def test_bad_rows_name_file_row_and_field(tmp_path, name, text, row, field, problem):
    assert_one_line_error(tmp_path / name, text, f"{tmp_path / name}: row {row}: field '{field}': ", problem)


def test_row_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "strings.yaml"
    path.write_text("- {prompt: p, chosen: a, rejected: b}\n- just a string\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"strings\.yaml: row 2: expected a mapping"):
        load_pairs(path)


def test_bad_parquet_row(tmp_path):
    path = tmp_path / "nulls.parquet"
    pd.DataFrame({"prompt": ["p1", "p2"], "chosen": ["a", None], "rejected": ["b", "c"]}).to_parquet(path)
    with pytest.raises(DataError, match=r"nulls\.parquet: row 2: field 'chosen': empty \(null\)"):
        load_pairs(path)


# --- bad files ---------------------------------------------------------------------------------------

BAD_FILES = [
    ("broken.yaml", "- prompt: [unclosed\n  chosen: a\n", "line 2: not valid YAML"),
    ("broken.json", '[\n  {"prompt": "p", "chosen": "a" "rejected": "b"}\n]', "line 2: not valid JSON"),
    ("broken.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p",\n', "line 2: not valid JSON"),
    ("wrapped.json", '{"data": [{"prompt": "p", "chosen": "a", "rejected": "b"}]}', "top level is a mapping with keys 'data'"),
    ("scalar.yaml", "just text\n", "top level is str"),
    ("empty.yaml", "", "no rows"),
    ("empty_list.json", "[]", "no rows"),
    ("blank_lines.jsonl", "\n\n", "no rows"),
    ("header_only.csv", "prompt,chosen,rejected\n", "no rows"),
    ("not_parquet.parquet", "prompt,chosen,rejected\n", "not a readable Parquet file"),
]


@pytest.mark.parametrize("name, text, problem", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_files_name_the_file(tmp_path, name, text, problem):
    assert_one_line_error(tmp_path / name, text, f"{tmp_path / name}: ", problem)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("prompt,chosen,rejected\ncaf\xe9,a,b\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv: not UTF-8"):
        load_pairs(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.yaml: file not found; check the path"):
        load_pairs(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize("name, fmt, shown", [("pairs.txt", None, "'txt'"), ("pairs", None, "(no file extension)"),
                                               ("pairs.yaml", "xml", "'xml'")])
def test_unknown_format_lists_the_supported_ones(tmp_path, name, fmt, shown):
    path = tmp_path / name
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_pairs(path, fmt=fmt)
    assert str(caught.value) == (f"{path}: unknown format {shown}; supported: yaml, yml, jsonl, json, csv, parquet "
                                 "(rename the file or pass the format explicitly)")


# --- hub ---------------------------------------------------------------------------------------------

def test_hub_fetch_without_datasets_says_how_to_install(monkeypatch):
    import fetch_hub

    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail even where it is installed
    with pytest.raises(DataError, match=r"trl-lib/ultrafeedback: .*pip install '\.\[hub\]'"):
        fetch_hub.fetch("trl-lib/ultrafeedback", "train", None)


def test_rows_from_memory_use_the_source_name():
    assert normalize_rows(iter(PAIRS), "mem") == PAIRS
    with pytest.raises(UserError, match=r"^org/set\[train\]: row 1: field 'chosen': missing"):
        normalize_rows([{"prompt": "p", "rejected": "b"}], "org/set[train]")


# --- unpaired feedback (KTO) ---------------------------------------------------------------------------

UNPAIRED_ROWS = [{"prompt": "Fix: he go.", "completion": " He goes.", "label": True},
                 {"prompt": "Fix: he go.", "completion": " He go.", "label": False}]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "yaml", "csv", "parquet"])
def test_trl_unpaired_rows_in_every_format(tmp_path, fmt):
    import json

    import yaml

    path = tmp_path / f"feedback.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in UNPAIRED_ROWS))
    elif fmt == "json":
        path.write_text(json.dumps(UNPAIRED_ROWS))
    elif fmt == "yaml":
        path.write_text(yaml.safe_dump(UNPAIRED_ROWS))
    elif fmt == "csv":  # CSV cells are text: "true" / "false"
        pd.DataFrame(UNPAIRED_ROWS).assign(label=["true", "False"]).to_csv(path, index=False)
    else:
        pd.DataFrame(UNPAIRED_ROWS).to_parquet(path)
    assert load_pairs(path) == UNPAIRED_ROWS


def test_conversational_unpaired_rows_trl_and_llama_factory_layouts():
    trl = {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}],
           "label": True}
    factory = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
               "label": True}
    sharegpt_turns = {"messages": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
                      "kto_tag": True, "system": "Be kind."}
    a, b, c = (normalize_rows([row], "feedback.json")[0] for row in (trl, factory, sharegpt_turns))
    assert (a["prompt"], a["completion"], a["label"]) == ("user: hi\nassistant:", " hello\n", True)
    assert {k: b[k] for k in ("prompt", "completion", "label")} == {k: a[k] for k in ("prompt", "completion", "label")}
    assert c["prompt"] == "system: Be kind.\nuser: hi\nassistant:" and c["label"] is True
    assert c["messages"]["completion"] == [{"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize("row, field, problem", [
    ({"prompt": "p", "completion": "c", "label": "maybe"}, "label", "expected true or false"),
    ({"prompt": "p", "label": True}, "completion", "missing"),
    ({"messages": [{"role": "user", "content": "hi"}], "label": False}, "messages", "must end with the assistant"),
    ({"prompt": "p", "completion": "  ", "label": True}, "completion", "empty"),
])
def test_bad_unpaired_rows(row, field, problem):
    with pytest.raises(DataError) as err:
        normalize_rows([row], "feedback.jsonl")
    assert f"feedback.jsonl: row 1: field '{field}': {problem}" in str(err.value)


def test_pairs_and_unpaired_rows_do_not_mix():
    with pytest.raises(DataError, match=r"mixed.jsonl: row 2: is unpaired feedback \(label\), but row 1 is a "
                                        r"preference pair"):
        normalize_rows([{"prompt": "p", "chosen": "a", "rejected": "b"}, UNPAIRED_ROWS[0]], "mixed.jsonl")
