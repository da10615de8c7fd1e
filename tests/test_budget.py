"""budget.fit_rows, the length rule, on the scratch tokenizer: exact fits measured by the stages' own Encoder."""

from preftune import budget
from preftune.batching import Encoder
from preftune.formats import render_plain

WORDS = "the tutor said that she goes to school and he went home yesterday ".split()


def text(n_words: int, start: int = 0) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n_words))


def fit(tok, rows, max_length=64, max_prompt=32, truncation="truncate"):
    encode = Encoder(tok, max_length)
    kept, stats = budget.fit_rows(rows, encode, max_prompt, truncation, render_plain)
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
