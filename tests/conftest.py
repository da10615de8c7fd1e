"""Fixtures shared across test modules: one tiny grammar dataset, tokenizer and GPT-2 per session for the model
and training tests; one uninterrupted tiny `dvc repro` per session for the fault and concurrency tests."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dvc_helpers import ENV, STAGES, dvc, git, output, stages_run, tiny_clone
from preftune.data import task
from preftune.model import scratch

KINDS = {"habit": 1, "uncorrected": 1, "bad_fix": 1, "new_error": 1, "rambling": 1}


@pytest.fixture(scope="session")
def generated():
    return task.generate(0, n_pairs=40, n_sft=200, n_gold=20, tutor_noise={}, rejected_kinds=KINDS)


@pytest.fixture(scope="session")
def tok(generated):
    texts = [d["prompt"] + d["response"] for d in generated["sft"]]
    texts += [p["prompt"] + p[k] for p in generated["pairs"] for k in ("chosen", "rejected")]
    return scratch.train_tokenizer(texts, 300)


@pytest.fixture(scope="session")
def base_model(tok):
    """Shared and never modified: tests that train or wrap a model take a deepcopy."""
    torch.manual_seed(0)
    return scratch.new_gpt2(tok, n_layer=1, n_embd=32, n_head=2, n_positions=128).eval()


@dataclass
class TinyRun:
    repo: Path  # a committed, clean workspace with the DVC cache and run-cache of the run; copy it, never edit it
    lock: str  # its dvc.lock: the reference every interrupted or concurrent run must reproduce


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    base = tmp_path_factory.mktemp("tiny-run")
    ENV.setdefault("DVC_SITE_CACHE_DIR", str(base / "dvc-site-cache"))  # keep DVC's per-repo state in tmp
    repo = tiny_clone(base / "repo")
    repro = dvc("repro", cwd=repo)
    assert stages_run(repro) == set(STAGES), output(repro)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "tiny run", cwd=repo)
    return TinyRun(repo=repo, lock=(repo / "dvc.lock").read_text())
