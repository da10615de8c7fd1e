"""Fixtures shared by the model and training tests: one tiny grammar dataset, tokenizer and GPT-2 per session."""

import pytest
import torch

from preftune import modeling, task

KINDS = {"habit": 1, "uncorrected": 1, "bad_fix": 1, "new_error": 1, "rambling": 1}


@pytest.fixture(scope="session")
def generated():
    return task.generate(0, n_pairs=40, n_sft=200, n_gold=20, tutor_noise={}, rejected_kinds=KINDS)


@pytest.fixture(scope="session")
def tok(generated):
    texts = [d["prompt"] + d["response"] for d in generated["sft"]]
    texts += [p["prompt"] + p[k] for p in generated["pairs"] for k in ("chosen", "rejected")]
    return modeling.train_tokenizer(texts, 300)


@pytest.fixture(scope="session")
def base_model(tok):
    """Shared and never modified: tests that train or wrap a model take a deepcopy."""
    torch.manual_seed(0)
    return modeling.new_gpt2(tok, n_layer=1, n_embd=32, n_head=2, n_positions=128).eval()
