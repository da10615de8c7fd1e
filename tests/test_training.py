"""The real training loops, a few steps each on a tiny scratch GPT-2: SFT, the Bradley-Terry reward model and
preference optimisation (DPO and every loss of preftune.train.losses), including the "break it" settings."""

import copy
import csv
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from preftune.data import fitting
from preftune.data.encoding import Encoder, Sequence, collate
from preftune.data.formats import render_plain
from preftune.model import adapters, packing
from preftune.model.logprobs import ResponseLogprobs
from preftune.model.packing import (
    PACKING_PROVED,
    PackedPairLogprobs,
    check_packed_equals_padded,
    pack_pairs,
    shared_prefix,
    supports_packing,
)
from preftune.model.reward_model import evaluate_pairs, load_reward_model, score_texts
from preftune.pipeline import schema
from preftune.pipeline.errors import ConfigError, UserError
from preftune.pipeline.schema import LOSS_NAMES
from preftune.train.logs import live_logger
from preftune.train.loop import Run, fit
from preftune.train.losses import PreferenceLoss
from preftune.train.pairs import encode_pairs, logprobs_of, reference_key
from preftune.train.preference_objective import PairObjective, preference_objective
from preftune.train.process import Process
from preftune.train.reward_objective import reward_objective
from preftune.train.sft_objective import SFTObjective

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
CPU = torch.device("cpu")
MAX_LENGTH = 128
LOG2 = math.log(2.0)
N_TRAIN = 30


def one_process(precision: str = "fp32", accumulation: int = 1) -> Process:
    return Process("cpu", {"precision": precision, "gradient_accumulation_steps": accumulation})


@pytest.fixture(scope="module")
def split(generated, tok):
    """The generated pairs fitted to MAX_LENGTH as prepare fits them (length_rule.py), so that no stage cuts them."""
    pairs, _ = fitting.fit_rows(generated["pairs"], Encoder(tok, MAX_LENGTH), MAX_LENGTH // 2, "truncate",
                                    render_plain)
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
    encode, process = Encoder(tok, MAX_LENGTH), one_process()
    history, _ = fit(Run(process), model, SFTObjective(process, encode, generated["sft"], split[1], cfg), 0, live)
    live.end()
    metrics = {**history[-1], **encode.stats()}

    losses = read_tsv(live_dir / "plots" / "metrics" / "train" / "loss.tsv", "loss")
    heldout = read_tsv(live_dir / "plots" / "metrics" / "heldout" / "loss.tsv", "loss")
    assert len(losses) == len(heldout) == 3
    assert losses[-1] < losses[0]
    assert heldout[-1] < heldout[0]
    assert losses[0] < math.log(len(tok)) + 0.5  # per-token mean NLL, not a sum
    summary = json.loads((live_dir / "metrics.json").read_text())
    assert summary["train"]["loss"] == pytest.approx(metrics["train_loss"], abs=1e-6)
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
    process = one_process()
    history, _ = fit(Run(process), model, reward_objective(process, Encoder(tok, MAX_LENGTH), train, heldout, cfg), 0,
                     live)
    live.end()
    metrics = history[-1]

    losses = read_tsv(live_dir / "plots" / "metrics" / "train" / "loss.tsv", "loss")
    accuracy = read_tsv(live_dir / "plots" / "metrics" / "train" / "accuracy.tsv", "accuracy")
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    assert metrics["train_accuracy"] == pytest.approx(accuracy[-1], abs=1e-6)
    assert metrics["train_accuracy"] > 0.5
    for key in ("heldout_accuracy", "heldout_margin", "heldout_reward_mean", "heldout_reward_std", "train_margin"):
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
def reference(base_model, tok, split):
    """What the reference stage writes: summed response log-probs under the (frozen) SFT model, by "<split>/<kind>"."""
    encode = Encoder(tok, MAX_LENGTH)
    return {reference_key(name, kind): logprobs_of(base_model, seqs, tok.pad_token_id, CPU)
            for name, rows in zip(("train", "heldout"), split) for kind, seqs in encode_pairs(encode, rows).items()}


def dpo_cfg(**overrides) -> dict:
    return {**copy.deepcopy(PARAMS["dpo"]), "epochs": 3, "lr": 5e-3, **overrides}


def lora_policy(base_model):
    torch.manual_seed(0)
    return adapters.attach_lora(copy.deepcopy(base_model), 8, 16, 0.0, ["c_attn", "c_proj"])


def objective(split, reference, tok, cfg, heldout=None):
    return preference_objective(one_process(), Encoder(tok, MAX_LENGTH), split[0],
                                split[1] if heldout is None else heldout, cfg, PreferenceLoss.from_params(cfg),
                                reference, "reference")


def train(base_model, split, reference, tok, cfg, policy=None):
    policy = lora_policy(base_model) if policy is None else policy
    dpo = objective(split, reference, tok, cfg)
    history, _ = fit(Run(dpo.process), policy, dpo, seed=0)
    return history


def test_reference_equals_the_lora_policy_at_step_0(base_model, split, reference, tok):
    """The precomputed reference (padded batches of 64, chosen/rejected/mismatched apart) and the policy's own pair
    batches (packed: no padding, each prompt run once) agree, so DPO starts at log 2."""
    train_as_heldout = {**reference, **{k.replace("train/", "heldout/"): v for k, v in reference.items()
                                        if k.startswith("train/")}}
    # The training pairs as the held-out set: the objective's end-of-epoch evaluation, before any step.
    dpo = objective(split, train_as_heldout, tok, dpo_cfg(), heldout=split[0])
    assert isinstance(dpo, PairObjective)
    stats = dpo.evaluate(dpo.wrap(lora_policy(base_model)).eval())
    assert dpo.packed  # the default, dpo.padding_free: the policy's packed pairs against the reference's padded batches
    assert stats["heldout_loss"] == pytest.approx(LOG2, abs=1e-5)
    assert abs(stats["heldout_kl_chosen"]) < 1e-4 and abs(stats["heldout_kl_rejected"]) < 1e-4


def test_dpo_sigmoid_lora_loss_falls_every_epoch(base_model, split, reference, tok):
    cfg = dpo_cfg()
    assert cfg["loss"] == "sigmoid"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a sane config does not warn (beta 0 does)
        history = train(base_model, split, reference, tok, cfg)
    assert len(history) == 3
    losses = [h["train_loss"] for h in history]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < LOG2 - 0.05  # from log 2 at step 0 (the first epoch's mean may sit a little above it)
    final = history[-1]
    assert final["train_kl_chosen"] - final["train_kl_rejected"] > 0
    assert final["train_margin"] > 0 and final["train_pair_accuracy"] > 0.5
    for key in ("heldout_loss", "heldout_pair_accuracy", "heldout_kl_chosen", "heldout_margin"):
        assert math.isfinite(final[key])


def test_dpo_only_trains_the_adapter(base_model, split, reference, tok):
    policy = lora_policy(base_model)
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    train(base_model, split, reference, tok, dpo_cfg(epochs=1), policy=policy)
    for n, p in policy.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any((p != 0).any() for n, p in policy.named_parameters() if "lora_B" in n)


def test_beta_zero_keeps_the_loss_at_log2(base_model, split, reference, tok):
    history = train(base_model, split, reference, tok, dpo_cfg(beta=0.0))
    for h in history:
        assert abs(h["train_loss"] - LOG2) < 1e-6
        assert abs(h["heldout_loss"] - LOG2) < 1e-6
        assert h["train_pair_accuracy"] == 0.0  # strictly positive margins only: none at beta 0


def test_self_reference_keeps_the_loss_at_log2(base_model, split, reference, tok):
    history = train(base_model, split, reference, tok, dpo_cfg(reference="self"))
    for h in history:
        assert abs(h["train_loss"] - LOG2) < 1e-6
        assert abs(h["heldout_loss"] - LOG2) < 1e-6
        assert h["train_kl_chosen"] == 0.0 and h["train_kl_rejected"] == 0.0


def test_beta_zero_warns_in_the_dpo_stage_only():
    params = {**copy.deepcopy(PARAMS), "dpo": dpo_cfg(beta=0.0)}
    with pytest.warns(UserWarning, match="dpo.beta is 0"):
        schema.check(params, "dpo")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        schema.check(params, "prepare")


@pytest.mark.parametrize("overrides, key", [({"beta": -1}, "dpo.beta"), ({"loss": "nope"}, "dpo.loss"),
                                            ({"reference": "nope"}, "dpo.reference"),
                                            ({"loss": "ipo", "beta": 0.0}, "dpo.beta"),
                                            ({"loss": ["ipo", "sft"], "beta": 0.0}, "dpo.beta"),
                                            ({"loss": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0, 1.0]},
                                             "dpo.loss_weights"),
                                            ({"label_smoothing": 0.5}, "dpo.label_smoothing")])
def test_bad_dpo_config_is_one_config_error_at_stage_start(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        schema.check({**copy.deepcopy(PARAMS), "dpo": dpo_cfg(**overrides)}, "dpo")


def test_policy_without_trainable_parameters_is_a_config_error(base_model, split, reference, tok):
    policy = copy.deepcopy(base_model)
    for p in policy.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        train(base_model, split, reference, tok, dpo_cfg(), policy=policy)


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_every_loss_trains_one_epoch(base_model, split, reference, tok, loss):
    history = train(base_model, split, reference, tok, dpo_cfg(loss=loss, epochs=1))
    assert len(history) == 1
    for key, value in history[0].items():
        assert math.isfinite(value), (loss, key, value)


def test_bf16_base_gives_the_autocast_log_probs_and_trains_an_fp32_adapter(base_model, split, reference, tok):
    """Under bf16 the dpo stage holds the frozen base in bf16 (adapters.frozen_linears_to): autocast casts those
    weights with the same rounding on every forward, so the log-probs equal autocast's over fp32 weights, and so
    the reference stage's (the SFT model under autocast) at step 0. The adapter and its optimizer stay fp32."""
    seqs = encode_pairs(Encoder(tok, MAX_LENGTH), split[0])
    autocast_policy, bf16_base = lora_policy(base_model), lora_policy(base_model)
    assert adapters.frozen_linears_to(bf16_base, torch.bfloat16) > 0
    assert {p.dtype for p in bf16_base.parameters() if p.requires_grad} == {torch.float32}
    assert bf16_base.get_input_embeddings().weight.dtype == torch.float32  # tied to the output head: kept
    for kind in ("chosen", "rejected"):
        with_base = logprobs_of(bf16_base, seqs[kind], tok.pad_token_id, CPU, precision="bf16")
        assert torch.equal(with_base, logprobs_of(autocast_policy, seqs[kind], tok.pad_token_id, CPU, precision="bf16"))
        assert torch.equal(with_base, logprobs_of(base_model, seqs[kind], tok.pad_token_id, CPU, precision="bf16"))
    cfg = dpo_cfg(precision="bf16", epochs=2)
    process = one_process("bf16")
    dpo = preference_objective(process, Encoder(tok, MAX_LENGTH), split[0], split[1], cfg,
                               PreferenceLoss.from_params(cfg), reference, "reference")
    history, trained = fit(Run(process), bf16_base, dpo, seed=0)
    assert history[-1]["train_loss"] < history[0]["train_loss"] and math.isfinite(history[-1]["heldout_loss"])
    assert any((p != 0).any() for n, p in bf16_base.named_parameters() if "lora_B" in n)
    assert {p.dtype for p in bf16_base.parameters() if p.requires_grad} == {torch.float32}


# --- padding-free pairs (packing.py) ---------------------------------------------------------------------

def tiny_llama():
    """Rotary positions and grouped-query attention (4 query heads share 2 key/value heads), as SmolLM2 has."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))


def tiny_qwen2():
    """Qwen2's attention has biases on q/k/v, and grouped-query attention."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))


def tiny_lfm2():
    """A hybrid: short convolutions along the sequence between attention layers (state that crosses segments)."""
    from transformers import Lfm2Config, Lfm2ForCausalLM
    torch.manual_seed(0)
    model = Lfm2ForCausalLM(Lfm2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
                                       layer_types=["conv", "full_attention"]))
    for p in model.parameters():  # weights at a trained model's scale: at init's 0.02 the convolution barely matters
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.1)
    return model


# One builder per architecture in PACKING_PROVED (the GPT-2 is conftest's base_model): packing is allowed only where
# this file proves it.
TINY_MODELS = {"llama": tiny_llama, "qwen2": tiny_qwen2}


def awkward_pairs(vocab: int, n: int = 6):
    """Pairs of different lengths whose answers share a first token or two; one rejected answer is the start of its
    chosen one (the shared prefix is then the whole rejected sequence), one prompt is a single token."""
    g = torch.Generator().manual_seed(1)
    ids = lambda k: torch.randint(3, vocab, (k,), generator=g).tolist()
    chosen, rejected = [], []
    for i in range(n):
        prompt, common = ids(1 if i == 0 else 2 + 3 * i), ids(i % 3)
        a, b = ids(1 + 2 * i), ids(9 - i)
        chosen.append(Sequence(tuple(prompt + common + a), len(prompt)))
        rejected.append(Sequence(tuple(prompt + common + (a[:1] if i == 4 else b)), len(prompt)))
    return chosen, rejected


def test_every_architecture_allowed_to_pack_has_its_equality_test():
    assert set(PACKING_PROVED) == {"gpt2", *TINY_MODELS}


@pytest.mark.parametrize("architecture", PACKING_PROVED)
def test_packed_pairs_give_the_padded_log_probs_and_gradients(base_model, architecture):
    """A packed batch (no padding, each shared prefix run once) against the same pairs padded: summed log-probs,
    token counts and every LoRA gradient agree within fp32 rounding."""
    model = copy.deepcopy(base_model) if architecture == "gpt2" else TINY_MODELS[architecture]()
    model.eval()
    policy = adapters.attach_lora(model, 4, 8, 0.0, ["c_attn", "c_proj"] if architecture == "gpt2" else "all-linear")
    for name, p in policy.named_parameters():
        if "lora_B" in name:  # a trained adapter: LoRA's B starts at zero, which would hide its gradient path
            torch.nn.init.normal_(p, std=0.1)
    chosen, rejected = awkward_pairs(min(97, model.config.vocab_size))
    weights = torch.linspace(-1.0, 2.0, 2 * len(chosen))  # an arbitrary loss: every sequence's gradient counts

    def run(wrapper, batch):
        sums, tokens = wrapper(**batch)
        policy.zero_grad()
        (sums * weights).sum().backward()
        return sums.detach(), tokens, {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}

    assert supports_packing(policy) is None
    padded = run(ResponseLogprobs(policy), collate(chosen + rejected, 0))
    packed_batch = pack_pairs(chosen, rejected)
    packed = run(PackedPairLogprobs(policy), packed_batch)
    assert torch.equal(packed[1], padded[1])
    assert torch.allclose(packed[0], padded[0], rtol=1e-5, atol=1e-4), (packed[0] - padded[0]).abs().max()
    for name, grad in padded[2].items():
        assert torch.allclose(packed[2][name], grad, rtol=1e-4, atol=1e-6 * grad.abs().max()), name
    shared = sum(shared_prefix(c.ids, r.ids) for c, r in zip(chosen, rejected))
    assert packed_batch["input_ids"].shape == (1, sum(len(s.ids) for s in chosen + rejected) - shared)
    # A padded batch through the packed wrapper is plain SDPA, bit for bit (held-out metrics, KTO's KL estimate).
    assert torch.equal(PackedPairLogprobs(policy)(**collate(chosen + rejected, 0))[0], padded[0])


def test_dpo_trains_on_padded_pairs_where_the_model_cannot_pack(base_model, split, reference, tok, caplog):
    """An attention implementation other than SDPA (here eager) keeps padded batches, says so, and trains."""
    policy = lora_policy(base_model)
    policy.get_base_model().set_attn_implementation("eager")
    assert "eager" in supports_packing(policy)
    dpo = objective(split, reference, tok, dpo_cfg(epochs=2))
    with caplog.at_level("INFO", logger="dpo"):
        wrapped = dpo.wrap(policy)
    assert isinstance(wrapped, ResponseLogprobs) and not isinstance(wrapped, PackedPairLogprobs)
    assert "padded batches instead" in caplog.text and not dpo.packed
    history, _ = fit(Run(dpo.process), policy, dpo, seed=0)
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["train_loss"] < LOG2


def test_an_architecture_not_proved_pads_and_says_so():
    """Lfm2 takes a pluggable attention and runs SDPA, so no attention setting refuses it; its convolution layers
    would carry state across the segments of a packed row (log-probs tenths of a nat apart). It pads."""
    model = tiny_lfm2().eval()
    assert "proved equal to padded batches only for gpt2, llama, qwen2, and this model is lfm2" in \
        supports_packing(model)
    chosen, rejected = awkward_pairs(97)
    with pytest.raises(UserError, match="set dpo.padding_free: false"):  # what packing would have done to it
        check_packed_equals_padded(PackedPairLogprobs(model), chosen[1:3], rejected[1:3], 0, CPU, "fp32")


def test_the_first_packed_batch_stops_a_model_that_ignores_the_segments(base_model, split, reference, tok,
                                                                         monkeypatch):
    """An attention that runs the packed row as one causal sequence (a model that dropped the segment kwargs)
    passes supports_packing; the check on the first batch stops the run in one line before any step."""
    def one_causal_row(module, query, key, value, attention_mask, segments=None, **kwargs):
        return original(module, query, key, value, attention_mask, segments=None, **kwargs)
    original = packing.pair_attention
    monkeypatch.setattr(packing, "pair_attention", one_causal_row)
    policy = lora_policy(base_model)
    dpo = objective(split, reference, tok, dpo_cfg(epochs=1))
    before = {n: p.clone() for n, p in policy.named_parameters() if p.requires_grad}
    with pytest.raises(UserError, match=r"packed pairs give other log-probs than padded ones on this model \("):
        fit(Run(dpo.process), policy, dpo, seed=0)
    assert dpo.packed and all(torch.equal(p, before[n]) for n, p in policy.named_parameters() if p.requires_grad)


def test_a_loss_mixture_trains_and_logs_each_term(base_model, split, reference, tok):
    """dpo.loss: [sigmoid, sft] (RPO) with weights: the logged loss is the weighted sum of the logged terms."""
    history = train(base_model, split, reference, tok, dpo_cfg(loss=["sigmoid", "sft"], loss_weights=[1.0, 0.5],
                                                               epochs=1))
    epoch = history[0]
    for split_name in ("train", "heldout"):
        terms = epoch[f"{split_name}_loss_sigmoid"], epoch[f"{split_name}_loss_sft"]
        assert epoch[f"{split_name}_loss"] == pytest.approx(terms[0] + 0.5 * terms[1], rel=1e-5)
        assert terms[1] > 0  # a negative log-likelihood per token
    single = train(base_model, split, reference, tok, dpo_cfg(epochs=1))[0]
    assert "train_loss_sigmoid" not in single  # one loss: the log is as before


def test_an_accelerate_config_that_shards_by_itself_is_refused(monkeypatch):
    """`sharding` is the one switch: an accelerate config with FSDP or DeepSpeed turned on is one line."""
    for name, value in (("ACCELERATE_USE_FSDP", "true"), ("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(ConfigError, match="set sharding: fsdp2, zero2 or zero3 in params.yaml"):
                one_process()


def test_sharding_with_one_process_trains_unsharded_and_says_so(caplog):
    cfg = {"precision": "fp32", "gradient_accumulation_steps": 1, "batch_size": 2, "max_grad_norm": 1.0}
    with caplog.at_level("INFO", logger="sharding"):
        process = Process("cpu", cfg, shard="fsdp2")
    assert (process.sharding, process.sharded, process.fsdp2, process.loss_scale) == ("none", False, False, 1)
    assert "nothing to shard, training unsharded" in caplog.text
