"""The length rule of `prepare`: every row fits `model.max_length` tokens, measured by the Encoder every later
stage encodes with (batching.py), so on prepared data no stage cuts anything.

A row is a prompt and its answers (chosen and rejected, or one unpaired completion); each answer ends in EOS.
A row that fits is left alone. Otherwise, as TRL and LLaMA-Factory do, it is cut rather than dropped
(`data.truncation: truncate`, the default):

- the prompt keeps its end, the part the answer follows: a conversation loses its oldest turns first (the
  system message stays, and so does the last user turn), then tokens from the left. It may keep
  `max_prompt_length` tokens, or more when the answers leave room (max_length minus the longer answer);
- every answer keeps its start and is cut to what the prompt leaves. A cut answer gets no EOS (prepare marks it
  `<answer>_cut: true`), so the model is never taught to stop mid-answer. Chosen and rejected are cut at the same
  budget, so the pair still carries the preference.

`data.truncation: drop` keeps this project's earlier rule: answers are never cut; a row whose longer answer
cannot fit with one prompt token is dropped, and the prompt gets what the answers leave. Under either rule a
row is dropped when nothing of its prompt would remain. Every cut and drop is counted, per kind.
"""

from __future__ import annotations

from tqdm import tqdm

from .batching import Encoder
from .formats import RenderMessages, answer_fields, render_row


def default_prompt_length(max_length: int, max_prompt_length: int | None) -> int:
    """`model.max_prompt_length`, or half of max_length when it is null (TRL's old default: 512 of 1024)."""
    return max_length // 2 if max_prompt_length is None else max_prompt_length


def fit_rows(rows: list[dict], encode: Encoder, max_prompt_length: int, truncation: str,
             render: RenderMessages) -> tuple[list[dict], dict]:
    """Rows that fit encode.max_length (cut as the module docstring says), and the counts."""
    fields = answer_fields(rows[0]) if rows else ()
    stats = {"max_length": encode.max_length, "max_prompt_length": max_prompt_length, "truncation": truncation,
             "rows_cut": 0, "prompts_cut": 0, "prompt_turns_dropped": 0, "prompt_tokens_removed": 0,
             **{f"{f}_cut": 0 for f in fields}, **{f"{f}_tokens_removed": 0 for f in fields},
             "dropped_answer_too_long": 0, "dropped_nothing_left": 0}
    kept = []
    for row in tqdm(rows, desc="fit rows to max_length", unit="row", leave=False, disable=None):
        fitted = _fit(row, fields, encode, max_prompt_length, truncation, render, stats)
        if fitted is not None:
            kept.append(fitted)
    return kept, stats


def _fit(row: dict, fields, encode: Encoder, max_prompt: int, truncation: str, render, stats: dict) -> dict | None:
    max_length = encode.max_length
    answer = {f: encode.length(row["prompt"], row[f]) - len(encode.prompt_ids(row["prompt"])) for f in fields}
    prompt_len = len(encode.prompt_ids(row["prompt"]))
    if prompt_len + max(answer.values()) <= max_length and _fits(row, fields, encode):
        return row
    longest = max(answer.values())  # EOS included
    if truncation == "drop":
        if longest > max_length - 1:
            stats["dropped_answer_too_long"] += 1
            return None
        budget = max_length - longest
    else:
        budget = min(max(max_prompt, max_length - longest), max_length - 1)  # one answer token at least
    original = row
    if prompt_len > budget and "messages" in row:
        row = _drop_oldest_turns(row, encode, budget, render)
        if row is not original:
            stats["prompt_turns_dropped"] += 1
    if len(encode.prompt_ids(row["prompt"])) > budget:
        row = {**row, "prompt": encode.tail(row["prompt"], budget)}
    if not row["prompt"].strip():
        stats["dropped_nothing_left"] += 1
        return None
    new_prompt_len = len(encode.prompt_ids(row["prompt"]))
    if new_prompt_len < prompt_len:
        stats["prompts_cut"] += 1
        stats["prompt_tokens_removed"] += prompt_len - new_prompt_len
    for f in fields:
        while encode.length(row["prompt"], row[f], eos=not row.get(f"{f}_cut", False)) > max_length:
            room = max_length - len(encode.prompt_ids(row["prompt"]))
            if truncation == "drop" or room < 1:  # drop: a merge at the boundary left the answer one token short
                stats["dropped_answer_too_long" if truncation == "drop" else "dropped_nothing_left"] += 1
                return None
            before = len(encode.split_ids(row["prompt"], row[f])[1])
            row = {**row, f: _head(encode, row["prompt"], row[f], room), f"{f}_cut": True}
            if not row[f].strip():
                stats["dropped_nothing_left"] += 1
                return None
            removed = before - len(encode.split_ids(row["prompt"], row[f])[1])
            stats[f"{f}_tokens_removed"] += removed
        if row.get(f"{f}_cut"):
            stats[f"{f}_cut"] += 1
    stats["rows_cut"] += 1
    return row


def _fits(row: dict, fields, encode: Encoder) -> bool:
    return all(encode.length(row["prompt"], row[f], eos=not row.get(f"{f}_cut", False)) <= encode.max_length
               for f in fields)


def _head(encode: Encoder, prompt: str, answer: str, room: int) -> str:
    """The start of `answer` whose encoding after `prompt`, without EOS, is at most `room` tokens."""
    enc = encode.tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    for k in range(min(room, len(offsets)), 0, -1):
        piece = answer[:offsets[k - 1][1]]
        if encode.length(prompt, piece, eos=False) - len(encode.prompt_ids(prompt)) <= room:
            return piece  # a prefix can tokenize differently at its new end: checked with the Encoder itself
    return ""


def _drop_oldest_turns(row: dict, encode: Encoder, budget: int, render: RenderMessages) -> dict:
    """Drop the oldest user turn (and the answers after it) until the prompt fits `budget` tokens or one user
    turn is left; the system message stays."""
    messages = row["messages"]
    system = [m for m in messages["prompt"][:1] if m["role"] == "system"]
    turns = messages["prompt"][len(system):]
    best = row
    while True:
        later_users = [i for i, m in enumerate(turns) if m["role"] == "user" and i > 0]
        if not later_users:
            return best
        turns = turns[later_users[0]:]
        best = {**row, **render_row({**messages, "prompt": system + turns}, render)}
        if len(encode.prompt_ids(best["prompt"])) <= budget:
            return best
