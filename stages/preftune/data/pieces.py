"""Tokenizing long chats by their pieces: the text between two special tokens is tokenized once, however many of a
batch's texts hold it.

A fast (Rust) tokenizer first cuts its input at its added tokens, matched on the raw text, and then normalizes,
pre-tokenizes and tokenizes every piece between them on its own, so the ids of a text are its pieces' ids with the
special tokens' ids between them. A chat rendered by a template is mostly such pieces (a message between
`<|im_start|>` and `<|im_end|>`), and prepare measures the same messages many times: the prompt, the prompt with
each answer, and every cut of a prompt that is too long. Tokenized by pieces, each message costs one tokenization.

That is exact only where nothing in the tokenizer depends on where a piece sits or what surrounds an added token,
so `PieceTokenizer.prove` accepts a tokenizer only when (1) its Python class encodes as the fast tokenizer's own
class does (a subclass may rewrite a text first: CodeLlama's infilling) and it cuts at its special tokens (not
`split_special_tokens`), (2) none of its added tokens strips the whitespace beside it or must be a single word,
(3) no component depends on a piece's position (Metaspace's `prepend_scheme: first`, which adds its space to the
text's first piece only), (4) it neither truncates nor pads, and (5) on probe texts around every added token the
pieces give the ids of the whole text, and the tokenizer does not fail on them. Otherwise prepare tokenizes whole
texts and says why.
"""

from __future__ import annotations

import json
import re

PROBES = ("", " ", "\n", "  x", "x", " hello  there\n\n", "\tTab", "ünïcödé 日本語 😀", "1234 56", "'s don't",
          "\n\n\n", "a\r\nb", "<notspecial>", "   ")  # the pieces each probe joins: starts and ends that pre-tokenizers treat apart


class PieceTokenizer:
    """`tokenize(texts)`: the ids of each text (no special tokens added), the same as the tokenizer's own call,
    from a cache of the pieces between special tokens (`forget()` empties it)."""

    def __init__(self, tokenizer, pattern: re.Pattern, special_ids: dict[str, int]):
        self.backend, self.pattern, self.special_ids = tokenizer.backend_tokenizer, pattern, special_ids
        self.cache: dict[str, list[int]] = {}

    @classmethod
    def prove(cls, tokenizer) -> tuple[PieceTokenizer | None, str]:
        """A PieceTokenizer for `tokenizer`, or None and why not (a phrase to finish 'tokenizing whole texts: ...')."""
        from transformers import PreTrainedTokenizerFast

        backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        if backend is None:
            return None, "not a fast tokenizer"
        if type(tokenizer)._encode_plus is not PreTrainedTokenizerFast._encode_plus:
            return None, f"{type(tokenizer).__name__} encodes its own way"
        if getattr(tokenizer, "split_special_tokens", False) or getattr(backend, "encode_special_tokens", False):
            return None, "it reads its special tokens as text (split_special_tokens)"
        if backend.truncation is not None or backend.padding is not None:
            return None, "the tokenizer truncates or pads by itself"
        added = list(tokenizer.added_tokens_decoder.values())
        context = [t.content for t in added if t.lstrip or t.rstrip or t.single_word]
        if context:
            return None, f"added token {context[0]!r} depends on the text beside it (lstrip, rstrip or single_word)"
        raw = sorted({t.content for t in added if not t.normalized and t.content}, key=len, reverse=True)
        if not raw:
            return None, "no added tokens to cut at"
        try:
            if _position_dependent(json.loads(backend.to_str())):
                return None, "its Metaspace pre-tokenizer marks the text's first piece only (prepend_scheme: first)"
            ids = {text: backend.token_to_id(text) for text in raw}
            pieces = cls(tokenizer, re.compile("(" + "|".join(map(re.escape, raw)) + ")"), ids)
            for text in raw:
                for a in PROBES:
                    for b in PROBES:
                        probe = a + text + b
                        if pieces.tokenize([probe]) != [tokenizer(probe, add_special_tokens=False)["input_ids"]]:
                            return None, f"its pieces do not give the ids of the whole text {probe!r}"
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as err:  # noqa: BLE001  the Rust side's panics are BaseExceptions (pyo3)
            return None, f"it fails on a probe text ({type(err).__name__}: {str(err)[:80]})"
        pieces.forget()
        return pieces, "by the pieces between special tokens"

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        split = [self.pattern.split(text) for text in texts]  # text, special, text, ...: specials at odd places
        new = list(dict.fromkeys(p for parts in split for p in parts[::2] if p and p not in self.cache))
        if new:
            self.cache.update(zip(new, (e.ids for e in self.backend.encode_batch_fast(new, add_special_tokens=False))))
        return [[i for k, p in enumerate(parts) if p
                 for i in ((self.special_ids[p],) if k % 2 else self.cache[p])] for parts in split]

    def forget(self) -> None:
        self.cache = {}


def _position_dependent(component) -> bool:
    """Whether a tokenizer's JSON holds a Metaspace that prepends its space to the text's first piece only."""
    if isinstance(component, dict):
        if component.get("type") == "Metaspace" and component.get("prepend_scheme") == "first":
            return True
        return any(_position_dependent(v) for v in component.values())
    if isinstance(component, list):
        return any(_position_dependent(v) for v in component)
    return False
