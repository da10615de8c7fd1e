"""The length rule of `prepare`: every pair fits `model.max_length` tokens, decided on the model's tokenizer.

A pair needs its longer response + EOS, and at least one prompt token. If the response alone cannot fit,
the pair is dropped: cutting a response would teach the model a truncated answer. Otherwise the prompt gets
what is left: a conversation that is too long loses its oldest turns first (the system message stays,
and so does the last user turn), then any prompt still too long loses tokens from the left, since its end
is what the answer follows. Every drop and cut is counted.
"""

from __future__ import annotations

from .formats import RenderMessages, render_pair


class TokenCounter:
    """Lengths in the model's tokens (no special tokens added, as the Encoder tokenizes)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def tail(self, text: str, n: int) -> str:
        """The end of `text` that is at most n tokens, cut at a token boundary."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        for first in range(max(len(ids) - n, 0), len(ids)):
            piece = text[offsets[first][0]:]
            if self.count(piece) <= n:  # a suffix can tokenize differently at its new start: check
                return piece
        return ""


def fit_pairs(pairs: list[dict], counter, max_length: int, render: RenderMessages) -> tuple[list[dict], dict]:
    """Pairs that fit max_length (prompts shortened as the module docstring says), and the counts."""
    stats = {"max_length": max_length, "dropped_response_too_long": 0,
             "prompt_turns_dropped": 0, "prompt_tokens_cut": 0}
    kept = []
    for pair in pairs:
        budget = max_length - _response_length(pair, counter)
        if budget < 1:
            stats["dropped_response_too_long"] += 1
            continue
        if counter.count(pair["prompt"]) > budget and "messages" in pair:
            shorter = _drop_oldest_turns(pair, counter, max_length, render)
            if shorter is not pair:
                stats["prompt_turns_dropped"] += 1
                pair = shorter
                budget = max_length - _response_length(pair, counter)
        if counter.count(pair["prompt"]) > budget:
            stats["prompt_tokens_cut"] += 1
            pair = {**pair, "prompt": counter.tail(pair["prompt"], budget)}
        kept.append(pair)
    return kept, stats


def _response_length(pair: dict, counter) -> int:
    return max(counter.count(pair["chosen"]), counter.count(pair["rejected"])) + 1  # + EOS


def _drop_oldest_turns(pair: dict, counter, max_length: int, render: RenderMessages) -> dict:
    """Drop the oldest user turn (and the answers after it) until the pair fits or one user turn is left."""
    messages = pair["messages"]
    system = [m for m in messages["prompt"][:1] if m["role"] == "system"]
    turns = messages["prompt"][len(system):]
    best = pair
    while True:
        later_users = [i for i, m in enumerate(turns) if m["role"] == "user" and i > 0]
        if not later_users:
            return best
        turns = turns[later_users[0]:]
        best = {**pair, **render_pair({**messages, "prompt": system + turns}, render)}
        if counter.count(best["prompt"]) + _response_length(best, counter) <= max_length:
            return best
