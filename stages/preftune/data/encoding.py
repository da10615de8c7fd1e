"""From text to padded tensors: prompt/response tokenization with a checked boundary, collation with
masks built from lengths (never from pad ids), and length-sorted batches."""

from __future__ import annotations

from array import array
from contextlib import contextmanager
from dataclasses import dataclass

import numpy
import torch

# Sequences per forward wherever nothing is trained: reference log-probs, held-out metrics, scoring, the KL
# estimate, generation. One value, so that a memory limit is met by changing one line.
EVAL_BATCH = 64
# ...and at most this many padded positions per forward in length-sorted passes (length_batches): 64 sequences of
# 128 tokens, 8 of 1,024. Long rows then pad less and run in smaller batches.
EVAL_TOKENS = 8192


@dataclass(frozen=True)
class Sequence:
    """Token ids of prompt + response + EOS; the first `prompt_len` ids are the prompt.

    The ids are kept as 32-bit integers (array "i", from any sequence of ints): 4 bytes a token where a tuple of
    Python ints takes about 34, which is most of the memory a stage holds for a dataset's encoded rows."""

    ids: array
    prompt_len: int

    def __post_init__(self):
        if not (isinstance(self.ids, array) and self.ids.typecode == "i"):
            object.__setattr__(self, "ids", array("i", self.ids))

    @property
    def response_len(self) -> int:
        return len(self.ids) - self.prompt_len

    @property
    def scored_tokens(self) -> int:
        """Response tokens that get a log-prob: all of them, except a first token, which nothing predicts."""
        return len(self.ids) - max(self.prompt_len, 1)


class Encoder:
    """Tokenizes (prompt, response) so that the prompt's ids are a prefix of the sequence.

    Tokenizing prompt + response as one string can merge tokens across the boundary, and then no
    prompt length is right. We tokenize the whole text and keep it when the prompt's own ids are a
    prefix of it (the usual case, exactly what generation will see); otherwise we concatenate the
    two tokenizations and count the row in `boundary_merges`.

    A response ends in EOS once, unless prepare cut it (`eos=False`: a cut answer must not teach the model to
    stop there): an answer rendered by a chat template that closes turns with EOS already ends with it
    (formats.chat_renderer), and gets no second one; a generated answer, which stops at EOS, then encodes to
    the same ids. `prepare` fits every row with this same class (length_rule.py), so on prepared data nothing is cut
    here; a sequence still too long (a foreign file, a generated answer) loses prompt tokens from the left first, then
    response tokens from the right, and is counted in `truncated`.
    """

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.eos = tokenizer.eos_token_id
        self.boundary_merges = 0
        self.truncated = 0
        self._known: dict[str, list[int]] | None = None  # a batch's ids by text (`batch`), else no cache

    def ids(self, text: str) -> list[int]:
        """The text's token ids, without special tokens: inside `batch`, each text is tokenized once."""
        if self._known is None:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if text not in self._known:  # the length rule measures a cut prompt more than once
            self._known[text] = self._tokenize([text])[0]
        return self._known[text]

    @contextmanager
    def batch(self, texts: list[str], tokenize=None):
        """Tokenize `texts` in one batched call (the fast tokenizer's Rust side, not one Python call each) and
        answer `ids` from them, and from every other text tokenized inside the block. The ids are exactly those of
        one call per text; only a batch's worth is kept, so memory does not grow with the dataset. `tokenize`
        (texts -> ids, e.g. pieces.PieceTokenizer.tokenize) replaces the tokenizer's own batched call, and must
        give the same ids."""
        self._tokenize = tokenize or (lambda batch: self.tokenizer(batch, add_special_tokens=False)["input_ids"])
        unique = list(dict.fromkeys(texts))
        self._known = dict(zip(unique, self._tokenize(unique))) if unique else {}
        try:
            yield self
        finally:
            self._known = None

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.ids(prompt)

    def split_ids(self, prompt: str, response: str) -> tuple[list[int], list[int], bool]:
        """(prompt ids, response ids, whether the boundary merged), before any cut."""
        prompt_ids = self.ids(prompt)
        full = self.ids(prompt + response)
        if full[: len(prompt_ids)] == prompt_ids:
            return prompt_ids, full[len(prompt_ids):], False
        return prompt_ids, self.ids(response), True

    def end(self, response_ids: list[int], eos: bool) -> list[int]:
        """What follows the response: EOS, unless the answer is cut or already ends with it."""
        return [self.eos] if eos and response_ids[-1:] != [self.eos] else []

    def length(self, prompt: str, response: str, eos: bool = True) -> int:
        """Tokens of the encoded sequence before any cut (what must fit max_length)."""
        prompt_ids, response_ids, _ = self.split_ids(prompt, response)
        return len(prompt_ids) + len(response_ids) + len(self.end(response_ids, eos))

    def __call__(self, prompt: str, response: str, eos: bool = True, count: bool = True) -> Sequence:
        """`count=False` leaves the counters alone (KTO's mismatched prompt/answer sequences, which no one fitted)."""
        prompt_ids, response_ids, merged = self.split_ids(prompt, response)
        end = self.end(response_ids, eos)
        overflow = len(prompt_ids) + len(response_ids) + len(end) - self.max_length
        if count:
            self.boundary_merges += merged
            self.truncated += overflow > 0
        if overflow > 0:  # the prompt keeps its end, half of max_length at least when the answer is long
            keep = min(len(prompt_ids), max(self.max_length // 2, self.max_length - len(response_ids) - len(end)))
            prompt_ids = prompt_ids[len(prompt_ids) - keep:]
            room = self.max_length - len(prompt_ids)
            if len(response_ids) + len(end) > room:  # the answer loses its end, and a cut answer gets no EOS
                response_ids, end = response_ids[:room], []
        return Sequence(array("i", prompt_ids + response_ids + end), len(prompt_ids))

    def tail(self, text: str, n: int) -> str:
        """The end of `text` that is at most n tokens (as prompt_ids counts them), cut at a token boundary."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        if len(ids) <= n:
            return text
        for first in range(len(ids) - n, len(ids)):
            piece = text[offsets[first][0]:]
            if len(self.prompt_ids(piece)) <= n:  # a suffix can tokenize differently at its new start: check
                return piece
        return ""

    def row(self, row: dict, field: str, count: bool = True) -> Sequence:
        """The prepared row's prompt with its `field` answer; no EOS where prepare cut that answer."""
        return self(row["prompt"], row[field], eos=not row.get(f"{field}_cut", False), count=count)

    def stats(self) -> dict:
        return {"boundary_merges": self.boundary_merges, "truncated": self.truncated}


def collate(sequences: list[Sequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence in the batch (not to a fixed length).

    `response_mask[b, t]` is 1 where token t is a response token (EOS included): it selects the
    log-prob of predicting token t, so the mask is built from prompt and total lengths only.
    """
    width = max(len(s.ids) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for b, seq in enumerate(sequences):
        n = len(seq.ids)
        input_ids[b, :n] = torch.from_numpy(numpy.frombuffer(seq.ids, dtype=numpy.intc))
        attention_mask[b, :n] = 1
        response_mask[b, seq.prompt_len:n] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def left_pad(prompts: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts for batched generation: every row's next token is at the same position."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, ids in enumerate(prompts):
        input_ids[b, width - len(ids):] = torch.tensor(ids)
        attention_mask[b, width - len(ids):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def length_batches(sequences: list[Sequence], batch_size: int, max_tokens: int = EVAL_TOKENS) -> list[list[int]]:
    """Indices in batches of similar length (longest first: a memory problem shows at once), for forward-only
    passes: at most `batch_size` sequences and `max_tokens` padded positions a batch (one sequence at least), so
    padding shrinks; results go back to the original order by index."""
    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i].ids), i))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and \
                (len(batches[-1]) + 1) * len(sequences[batches[-1][0]].ids) <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
