"""The length rule of `prepare`: every row fits `model.max_length` tokens, measured by the Encoder every later
stage encodes with (encoding.py), so on prepared data no stage cuts anything.

A row is a prompt and its answers (chosen and rejected, or one unpaired completion); each answer ends in EOS.
A row that fits is left alone. Otherwise, as TRL and LLaMA-Factory do, it is cut rather than dropped
(`data.truncation: truncate`, the default):

- the prompt keeps its end, the part the answer follows. A conversation keeps its system message and every
  header the template puts around a turn (fit_prompt): its oldest turns go first, whole while what is left is
  still too long, then the oldest content that still has to go is cut from its start (an earlier turn's, else
  the last user turn's text). A text prompt loses tokens from the left. It may keep `max_prompt_length` tokens,
  or more when the answers leave room (max_length minus the longer answer);
- every answer keeps its start and is cut to what the prompt leaves. A cut answer gets no EOS (prepare marks it
  `<answer>_cut: true`), so the model is never taught to stop mid-answer. Chosen and rejected are cut at the same
  budget; a pair whose answers are the same after the cut carries no preference and is dropped.

`data.truncation: drop` keeps this project's earlier rule: answers are never cut; a row whose longer answer
cannot fit with one prompt token is dropped, and the prompt gets what the answers leave. Under either rule a
row is dropped when nothing of its prompt would remain (or of its last user turn). Every cut and drop is counted,
per kind: `prompt_turns_dropped` counts the turns (messages) dropped, `prompts_cut_in_earlier_turn`,
`prompts_cut_in_last_turn` and `prompts_cut_as_text` say where each cut prompt was cut. A prepared conversational
row keeps its prompt's messages (`messages.prompt`), so that evaluate and the on-policy rounds cut a prompt to
what generation leaves by the same rule (fit_prompts).
"""

from __future__ import annotations

import itertools

from .encoding import Encoder
from .formats import RenderMessages, render_row


def default_prompt_length(max_length: int, max_prompt_length: int | None) -> int:
    """`model.max_prompt_length`, or half of max_length when it is null (TRL's old default: 512 of 1024)."""
    return max_length // 2 if max_prompt_length is None else max_prompt_length


# Where fit_prompt cut: turns (messages) dropped whole, and the prompts cut inside a turn or as plain text.
PROMPT_CUTS = {"prompt_turns_dropped": 0, "prompts_cut_in_earlier_turn": 0, "prompts_cut_in_last_turn": 0,
               "prompts_cut_as_text": 0}


def fit_row(row: dict, fields, encode: Encoder, max_prompt: int, truncation: str, render, stats: dict) -> dict | None:
    """The row fitted to encode.max_length as the module docstring says, or None when it is dropped; adds its cuts
    and drops to `stats` (a Fitting counts dict)."""
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
    row = fit_prompt(row, encode, budget, render, stats)
    if row is None:
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
    if len(fields) == 2 and row[fields[0]] == row[fields[1]]:  # cut to the same start: no preference left
        stats["dropped_identical_after_cut"] += 1
        return None
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


def fit_prompt(row: dict, encode: Encoder, budget: int, render: RenderMessages, stats: dict) -> dict | None:
    """`row` with its prompt cut to at most `budget` tokens (as the module docstring says), or None when nothing
    of it would remain; adds to the PROMPT_CUTS counts in `stats`. A conversation (the row has "messages") keeps
    its system message and the template's headers; a text prompt keeps its end."""
    prompt_len = len(encode.prompt_ids(row["prompt"]))
    if prompt_len <= budget:
        return row
    if "messages" not in row:
        prompt = encode.tail(row["prompt"], budget)
        stats["prompts_cut_as_text"] += 1
        return {**row, "prompt": prompt} if prompt.strip() else None
    messages = row["messages"]
    system = messages["prompt"][:1] if messages["prompt"][0]["role"] == "system" else []
    turns = messages["prompt"][len(system):]
    starts = [i for i, m in enumerate(turns) if m["role"] == "user" and i > 0]
    groups = [turns[a:b] for a, b in zip([0] + starts, starts + [len(turns)])]  # a user turn and what answers it

    def rendered(kept: list) -> dict:
        cut = {**messages, "prompt": system + kept}
        if any(field in cut for field in ("chosen", "rejected", "completion")):  # a row being prepared
            return {**row, **render_row(cut, render)}
        return {**row, "prompt": render(cut["prompt"], True), "messages": cut}  # a prepared row: its prompt only

    def over(kept: list) -> int:  # tokens over the budget, negative when the prompt fits
        return len(encode.prompt_ids(render(system + kept, True))) - budget

    # Whole turns go, oldest first, while the rest is still too long: the fewest `drop` for which the turns after
    # groups[drop] fit (at most all but the last), searched from the guess that tokens go with characters.
    per_char = prompt_len / max(len(row["prompt"]), 1)
    sizes = itertools.accumulate(sum(len(str(m["content"])) for m in g) * per_char for g in groups)
    guess = next((k for k, size in enumerate(sizes) if size >= prompt_len - budget), len(groups) - 1)
    drop = _fewest(lambda k: over(_flat(groups[k + 1:])) <= 0, len(groups) - 1, guess)
    stats["prompt_turns_dropped"] += len(_flat(groups[:drop]))
    groups = groups[drop:]
    excess = over(_flat(groups))
    if excess <= 0:
        return rendered(_flat(groups))
    # Cut the oldest content that still has to go from its start: the oldest turn's first message
    first, rest = groups[0][0], _flat(groups[1:])
    content = _cut_head_to_fit(first["content"], encode,
                               lambda c: over([{**first, "content": c}, *groups[0][1:], *rest]) <= 0, excess)
    if content is None and rest:  # even all of it is not enough: the whole turn goes, and the rest fits
        stats["prompt_turns_dropped"] += len(groups[0])
        return rendered(rest)
    if content is None:
        return None
    stats["prompts_cut_in_earlier_turn" if rest or len(groups[0]) > 1 else "prompts_cut_in_last_turn"] += 1
    return rendered([{**first, "content": content}, *groups[0][1:], *rest])


def generation_budget(max_length: int, max_new_tokens: int) -> int:
    """Prompt tokens that leave room for `max_new_tokens` answer tokens and EOS within max_length (one at least)."""
    return max(max_length - max_new_tokens - 1, 1)


def fit_prompts(rows: list[dict], encode: Encoder, budget: int, render: RenderMessages) -> tuple[list[str], int]:
    """The prompts of prepared rows to generate from, each cut to `budget` tokens by prepare's rule (fit_prompt:
    a conversation keeps its system message and headers), and how many were cut. A prompt that cannot be cut
    that far keeps its last `budget` tokens as text."""
    stats = dict(PROMPT_CUTS)
    fitted = []
    for row in rows:
        cut = fit_prompt(row, encode, budget, render, stats)
        fitted.append(cut["prompt"] if cut is not None else encode.tail(row["prompt"], budget))
    return fitted, sum(f != r["prompt"] for f, r in zip(fitted, rows))


def _flat(groups: list[list]) -> list:
    return [m for g in groups for m in g]


def _cut_head_to_fit(text, encode: Encoder, fits, excess: int) -> str | None:
    """The longest end of `text`, cut at a token boundary, for which fits(end) holds; None when none does (an
    empty end counts as none). A search (_fewest), from the guess that cutting `excess` tokens (what the prompt is
    over its budget) is enough: fewer tokens make a prompt no longer, nearly always. Where they do (an end that
    starts with an emoji after a space can take more tokens than the longer end before it: 1.5% of random texts
    showed such a rise), the end found is the one the search reaches from the guess: it fits, but a longer end may
    too, and the earlier bisection may have found another (on the tests' and the benchmark's rows both give the
    same bytes)."""
    if not isinstance(text, str):
        return None
    starts = [start for start, _ in encode.tokenizer(text, add_special_tokens=False,
                                                     return_offsets_mapping=True)["offset_mapping"]]
    cut = _fewest(lambda k: fits(text[starts[k]:]), len(starts), excess)  # a cut before token k keeps text[starts[k]:]
    if cut == len(starts) or not text[starts[cut]:].strip():
        return None
    return text[starts[cut]:]


def _fewest(holds, n: int, guess: int) -> int:
    """The smallest k in [0, n) for which holds(k), or n when none does, for a `holds` that stays true once it is
    (false ... false true ... true). It looks at `guess` first, then gallops away from it and bisects, so a good
    guess costs two calls where a bisection costs log2(n) and a scan from 0 costs k + 1."""
    if n == 0:
        return 0
    probe, step = min(max(guess, 0), n - 1), 1
    going_down = holds(probe)
    no, yes = (-1, probe) if going_down else (probe, n)  # holds(no) is false (or no is -1), holds(yes) true (or n)
    while yes - no > 1:
        probe = yes - step if going_down else no + step
        if (going_down and probe <= no) or (not going_down and probe >= yes):
            break
        if holds(probe):
            yes = probe
            if not going_down:
                break
        else:
            no = probe
            if going_down:
                break
        step *= 2
    while yes - no > 1:
        mid = (no + yes) // 2
        if holds(mid):
            yes = mid
        else:
            no = mid
    return yes
