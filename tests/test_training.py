"""The real training loops, a few steps each on a tiny scratch GPT-2: SFT, the Bradley-Terry reward model and
preference optimisation (DPO and every loss of preftune.losses), including the "break it" settings."""

import copy
import csv
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from preftune import modeling
from preftune.batching import Encoder
from preftune.errors import ConfigError
from preftune.losses import LOSSES
from preftune.pairs import encode_pairs, logprobs_of
from preftune.logprobs import ResponseLogprobs
from preftune.preference import PairBatcher, pair_objective, train_preferences
from preftune.reward_model import evaluate_pairs, load_reward_model, score_texts
from preftune.reward_training import train_reward_model
from preftune.supervised import train_sft
from preftune.training import Run, live_logger

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
CPU = torch.device("cpu")
MAX_LENGTH = 128
LOG2 = math.log(2.0)
N_TRAIN = 30


def one_process(precision: str = "fp32", accumulation: int = 1) -> Run:
    return Run("cpu", {"precision": precision, "gradient_accumulation_steps": accumulation})


@pytest.fixture(scope="module")
def split(generated):
    pairs = generated["pairs"]
    return pairs[:N_TRAIN], pairs[N_TRAIN:]


def read_tsv(path: Path, column: str) -> list[float]:
    with open(path, newline="", encoding="utf-8") as f:
        return [float(row[column]) for row in csv.DictReader(f, delimiter="\t")]


# --- SFT -------------------------------------------------------------------------------------------------

def test_train_sft_loss_falls_and_dvclive_writes_metrics(base_model, tok, generated, split, tmp_path):
    torch.manual_seed(0)
    model = copy.deepcopy(base_model)
    cfg = {**PARAMS["sft"], "epochs": 3, "lr": 3e-3, "batch_size": 32, "warmup_steps": 5}
    live_dir = tmp_path / "live"
    live = live_logger(str(live_dir))
    metrics, _ = train_sft(one_process(), model, tok, generated["sft"], split[1], cfg, MAX_LENGTH, 0, live)
    live.end()

    losses = read_tsv(live_dir / "plots" / "metrics" / "train_loss.tsv", "train_loss")
    heldout = read_tsv(live_dir / "plots" / "metrics" / "heldout_loss.tsv", "heldout_loss")
    assert len(losses) == len(heldout) == 3
    assert losses[-1] < losses[0]
    assert heldout[-1] < heldout[0]
    assert losses[0] < math.log(len(tok)) + 0.5  # per-token mean NLL, not a sum
    summary = json.loads((live_dir / "metrics.json").read_text())
    assert summary["train_loss"] == pytest.approx(metrics["train_loss"], abs=1e-6)
    assert summary["step"] == 2
    assert metrics["truncated"] == 0 and metrics["boundary_merges"] == 0
    assert not (live_dir / "dvc.yaml").exists()  # the stage's dvc.yaml declares the plots, not DVCLive
    assert not (live_dir / "report.html").exists()


# --- reward model ----------------------------------------------------------------------------------------

def test_train_reward_model_learns_and_round_trips(base_model, tok, split, tmp_path):
    base_model.save_pretrained(tmp_path / "sft")
    tok.save_pretrained(tmp_path / "sft")
    torch.manual_seed(0)
    model = load_reward_model(str(tmp_path / "sft"))
    cfg = {**PARAMS["reward"], "epochs": 4, "lr": 3e-3, "batch_size": 8, "warmup_steps": 2}
    live_dir = tmp_path / "live"
    live = live_logger(str(live_dir))
    train, heldout = split
    metrics, _ = train_reward_model(one_process(), model, tok, train, heldout, cfg, MAX_LENGTH, 0, live)
    live.end()

    losses = read_tsv(live_dir / "plots" / "metrics" / "train_loss.tsv", "train_loss")
    accuracy = read_tsv(live_dir / "plots" / "metrics" / "train_accuracy.tsv", "train_accuracy")
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    assert metrics["train_accuracy"] == pytest.approx(accuracy[-1], abs=1e-6)
    assert metrics["train_accuracy"] > 0.5
    for key in ("heldout_accuracy", "heldout_margin", "reward_mean", "reward_std", "train_margin"):
        assert math.isfinite(metrics[key])

    model.save_pretrained(tmp_path / "reward")
    tok.save_pretrained(tmp_path / "reward")
    loaded = load_reward_model(str(tmp_path / "reward"))
    assert loaded.config.pad_token_id == tok.pad_token_id
    encode = Encoder(tok, MAX_LENGTH)
    prompts = [r["prompt"] for r in train + heldout for _ in range(2)]
    responses = [r[k] for r in train + heldout for k in ("chosen", "rejected")]
    before = score_texts(model, encode, prompts, responses, CPU, batch_size=16)
    after = score_texts(loaded, encode, prompts, responses, CPU, batch_size=16)
    assert before == after
    pairs = [(encode(r["prompt"], r["chosen"]), encode(r["prompt"], r["rejected"])) for r in train]
    assert evaluate_pairs(loaded, pairs, tok.pad_token_id, CPU)["accuracy"] == metrics["train_accuracy"]


# --- preference optimisation -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoded(tok, split):
    encode = Encoder(tok, MAX_LENGTH)
    return {"train": encode_pairs(encode, split[0]), "heldout": encode_pairs(encode, split[1])}


@pytest.fixture(scope="module")
def reference(base_model, encoded, tok):
    """What the reference stage computes: summed response log-probs under the (frozen) SFT model."""
    return {name: {kind: logprobs_of(base_model, seqs, tok.pad_token_id, CPU) for kind, seqs in enc.items()}
            for name, enc in encoded.items()}


def dpo_cfg(**overrides) -> dict:
    return {**copy.deepcopy(PARAMS["dpo"]), "epochs": 3, "lr": 5e-3, **overrides}


def lora_policy(base_model):
    torch.manual_seed(0)
    return modeling.attach_lora(copy.deepcopy(base_model), 8, 16, 0.0, ["c_attn", "c_proj"])


def batchers(encoded, reference, tok):
    return (PairBatcher(encoded["train"], reference["train"], tok.pad_token_id, CPU),
            PairBatcher(encoded["heldout"], reference["heldout"], tok.pad_token_id, CPU))


def run(base_model, encoded, reference, tok, cfg, policy=None):
    train, heldout = batchers(encoded, reference, tok)
    policy = lora_policy(base_model) if policy is None else policy
    history, _ = train_preferences(one_process(), policy, train, heldout, N_TRAIN, len(encoded["heldout"]["chosen"]),
                                   cfg, seed=0)
    return history


def test_reference_equals_the_lora_policy_at_step_0(base_model, encoded, reference, tok):
    """The precomputed reference (batches of 64, chosen/rejected/mismatched apart) and the policy's own pair
    batches (chosen and rejected padded together) agree, so DPO starts at exactly log 2."""
    cfg = dpo_cfg()
    train, _ = batchers(encoded, reference, tok)
    # The training pairs as the held-out set: the objective's end-of-epoch evaluation, before any step.
    objective = pair_objective(one_process(), train, train, N_TRAIN, N_TRAIN, cfg)
    stats = objective.evaluate(ResponseLogprobs(lora_policy(base_model)).eval())
    assert stats["heldout_loss"] == pytest.approx(LOG2, abs=1e-5)
    assert abs(stats["heldout_kl_chosen"]) < 1e-4 and abs(stats["heldout_kl_rejected"]) < 1e-4


def test_dpo_sigmoid_lora_loss_falls_every_epoch(base_model, encoded, reference, tok):
    cfg = dpo_cfg()
    assert cfg["loss"] == "sigmoid"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a sane config does not warn (beta 0 does)
        history = run(base_model, encoded, reference, tok, cfg)
    assert len(history) == 3
    losses = [h["train_loss"] for h in history]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[0] < LOG2 + 1e-6
    assert losses[-1] < LOG2
    final = history[-1]
    assert final["train_kl_chosen"] - final["train_kl_rejected"] > 0
    assert final["train_margin"] > 0 and final["train_pair_accuracy"] > 0.5
    for key in ("heldout_loss", "heldout_pair_accuracy", "heldout_kl_chosen", "heldout_margin"):
        assert math.isfinite(final[key])


def test_dpo_only_trains_the_adapter(base_model, encoded, reference, tok):
    policy = lora_policy(base_model)
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    run(base_model, encoded, reference, tok, dpo_cfg(epochs=1), policy=policy)
    for n, p in policy.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any((p != 0).any() for n, p in policy.named_parameters() if "lora_B" in n)


def test_beta_zero_keeps_the_loss_at_log2_and_warns(base_model, encoded, reference, tok):
    with pytest.warns(UserWarning, match="dpo.beta is 0"):
        history = run(base_model, encoded, reference, tok, dpo_cfg(beta=0.0))
    for h in history:
        assert abs(h["train_loss"] - LOG2) < 1e-6
        assert abs(h["heldout_loss"] - LOG2) < 1e-6
        assert h["train_pair_accuracy"] == 0.0  # strictly positive margins only: none at beta 0


def test_self_reference_keeps_the_loss_at_log2(base_model, encoded, reference, tok):
    history = run(base_model, encoded, reference, tok, dpo_cfg(reference="self"))
    for h in history:
        assert abs(h["train_loss"] - LOG2) < 1e-6
        assert abs(h["heldout_loss"] - LOG2) < 1e-6
        assert h["train_kl_chosen"] == 0.0 and h["train_kl_rejected"] == 0.0


@pytest.mark.parametrize("overrides, key", [({"beta": -1}, "dpo.beta"), ({"loss": "nope"}, "dpo.loss"),
                                            ({"reference": "nope"}, "dpo.reference")])
def test_bad_dpo_config_is_a_config_error(base_model, encoded, reference, tok, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(base_model, encoded, reference, tok, dpo_cfg(**overrides))


def test_policy_without_trainable_parameters_is_a_config_error(base_model, encoded, reference, tok):
    policy = copy.deepcopy(base_model)
    for p in policy.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        run(base_model, encoded, reference, tok, dpo_cfg(), policy=policy)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains_one_epoch(base_model, encoded, reference, tok, loss):
    history = run(base_model, encoded, reference, tok, dpo_cfg(loss=loss, epochs=1))
    assert len(history) == 1
    for key, value in history[0].items():
        assert math.isfinite(value), (loss, key, value)
