#!/usr/bin/env python
"""DPO training throughput on this machine: this pipeline's training step against a naive from-scratch DPO
(the seed 003 notebook's design) and, when it is installed, TRL's DPOTrainer; same model, same data, same LoRA.

    .venv/bin/python benchmarks/dpo_throughput.py [--steps N] [--repeats K]

Variants (each times N steps of 8 pairs after W warm-up steps; the K repeats are interleaved A, B, C, A, B, C, ...
so that load from other processes hits every variant alike; medians over the repeats are reported):

  A  this stage: preftune.train.loop.train_step, imported, on preftune.train.preference_objective.PairObjective's loss (chosen and
     rejected in ONE forward, padded to the longest sequence of a length-grouped batch, reference log-probs
     precomputed by preftune.train.pairs.logprobs_of): forward, sigmoid loss, backward, clip, AdamW step. The one-off
     reference pass is timed too and amortised over 3 epochs of the training pairs.
  B  naive (seed 003 style): every sequence padded to 512 tokens, chosen and rejected in separate forwards, a
     second full copy of the SFT model run as reference (no_grad) every step, log-probs summed over
     prompt + response. Same LoRA policy, optimizer and clipping. Inputs are tokenized once up front (the notebook
     re-tokenizes every item every step; skipping that favours B).
  C  TRL DPOTrainer (optional): `pip install '.[bench]'`; skipped with a note when trl is not importable.

Model and data: models/sft and data/prepared/train.jsonl when present (copied to a temporary directory first, so
a concurrent `dvc repro` cannot change them mid-run); otherwise a scratch GPT-2 (params.yaml model section) with a
tokenizer trained on generated grammar data, so the benchmark also runs in a fresh clone.

Other processes on the machine distort small-model timings badly (two torch processes with 2 threads each on 2
cores slow every variant several-fold, unevenly). So each run first waits (up to --wait-idle s) for a quiet
machine, measures the share of CPU that other processes took during its timed steps ("other %"), and a run above
--contended is rerun (up to --retries times; the discarded runs stay in the JSON).

Results go to stdout and benchmarks/results/latest.json (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))
for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                   "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}.items():
    os.environ.setdefault(key, value)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from preftune.data import dataset, task  # noqa: E402
from preftune.data.encoding import Encoder  # noqa: E402
from preftune.model import adapters, loading, scratch  # noqa: E402
from preftune.pipeline import files  # noqa: E402
from preftune.train import loop  # noqa: E402
from preftune.train.batches import batch_order  # noqa: E402
from preftune.train.loop import adamw  # noqa: E402
from preftune.train.losses import PreferenceLoss  # noqa: E402
from preftune.train.process import Process  # noqa: E402
from preftune.train.pairs import encode_pairs, logprobs_of  # noqa: E402
from preftune.train.preference_objective import PairObjective  # noqa: E402

SEED = 42
BATCH = 8
LR = 1e-4
BETA = 0.1
MAX_GRAD_NORM = 1.0
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["c_attn", "c_proj"]}
AMORTISE_EPOCHS = 3
RESULTS = REPO / "benchmarks" / "results" / "latest.json"
FLOP_FORMULA = ("est. FLOPs = 6 * N * policy tokens (forward+backward) + 2 * N * reference tokens (forward only), "
                "tokens = every position the model runs on, padding included; N = all parameters of the policy "
                "(frozen + LoRA) and of the reference. Not counted: attention-score FLOPs (they grow with the padded "
                "length, so B's hardware work is undercounted) and LoRA's skipped weight gradients (6N overcounts a "
                "frozen base, whose backward is ~4N).")


# --- machine ---------------------------------------------------------------------------------------------------

def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    import peft
    import transformers
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}


class Contended(Exception):
    """Other processes took too much CPU during a run; it is abandoned and retried."""

    def __init__(self, share: float):
        super().__init__(f"other processes used {100 * share:.0f}% of the CPU")
        self.share = share


class CpuMeter:
    """How much of the machine OTHER processes used while a block ran: (all busy CPU time from /proc/stat minus
    this process's CPU time) / (wall time x cores). 0 = we had the machine to ourselves; 1 = they used all of it."""

    def __init__(self, abort_above: float | None = None):
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.abort_above = abort_above
        self.start()

    def _busy(self) -> float | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        return (sum(fields) - fields[3] - fields[4]) / self.tick  # all but idle and iowait

    def start(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), sum(os.times()[:2])

    def check(self) -> None:
        """Raise Contended once the timed steps have run 2 s with others above `abort_above` (None: never)."""
        if self.abort_above is None or time.perf_counter() - self.t0 < 2.0:
            return
        share = self.others()
        if share is not None and share > self.abort_above:
            raise Contended(share)

    def others(self) -> float | None:
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        own = sum(os.times()[:2]) - self.own0
        return max(0.0, min(1.0, (busy - self.busy0 - own) / (wall * (os.cpu_count() or 1))))


def wait_for_idle(limit: float, threshold: float = 0.15) -> float | None:
    """Wait (up to `limit` s) until other processes use < `threshold` of the machine over a 1 s window; returns the
    last window's share."""
    meter, deadline, share = CpuMeter(), time.perf_counter() + limit, None
    while True:
        meter.start()
        time.sleep(1.0)
        share = meter.others()
        if share is None or share < threshold or time.perf_counter() >= deadline:
            return share


def matmul_gflops(n: int = 1024, iters: int = 30) -> float:
    """fp32 (n x n) @ (n x n) on all torch threads, 2 n^3 FLOPs each."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=c)
    start = time.perf_counter()
    for _ in range(iters):
        torch.mm(a, b, out=c)
    return 2 * n ** 3 * iters / (time.perf_counter() - start) / 1e9


# --- model and data ---------------------------------------------------------------------------------------------

def load_params() -> dict:
    try:
        from preftune.pipeline.params import load_params as load
        return load(str(REPO / "params.yaml"))
    except Exception:  # noqa: BLE001 - a fresh clone without params.yaml still benchmarks
        return {}


def prepare_inputs(workdir: Path, force_scratch: bool) -> dict:
    """A snapshot of the SFT model + tokenizer in `workdir/sft`, and the training pairs."""
    params = load_params()
    model_cfg = {"max_length": 128, "vocab_size": 1000, "n_layer": 2, "n_embd": 128, "n_head": 4,
                 **(params.get("model") or {})}
    sft_dir = workdir / "sft"
    sft_src, train_src = REPO / "models" / "sft", REPO / "data" / "prepared" / "train.jsonl"
    if not force_scratch and (sft_src / "config.json").exists() and train_src.exists():
        for attempt in range(3):  # a concurrent `dvc repro` may be rewriting models/sft
            try:
                shutil.rmtree(sft_dir, ignore_errors=True)
                shutil.copytree(sft_src, sft_dir)
                loading.load_causal_lm(str(sft_dir))
                loading.load_tokenizer(str(sft_dir))
                break
            except Exception:  # noqa: BLE001
                if attempt == 2:
                    raise
                time.sleep(5)
        rows = files.read_jsonl(train_src)
        return {"sft_dir": sft_dir, "rows": rows, "max_length": model_cfg["max_length"],
                "source": f"pipeline artifacts: models/sft, data/prepared/train.jsonl ({len(rows)} pairs)"}

    data_cfg = params.get("data") or {}
    noise = data_cfg.get("tutor_noise") or {"agreement": 0.1, "past_tense": 0.1, "article": 0.65, "plural": 0.65,
                                            "pronoun": 0.65, "comparative": 0.65}
    kinds = data_cfg.get("rejected_kinds") or {"habit": 0.4, "uncorrected": 0.15, "bad_fix": 0.15,
                                               "new_error": 0.15, "rambling": 0.15}
    generated = task.generate(SEED, 200, 1000, 0, noise, kinds)
    train, _ = dataset.split_by_prompt(generated["pairs"], 50, SEED)
    texts = [d["prompt"] + d["response"] for d in generated["sft"]]
    tokenizer = scratch.train_tokenizer(texts, model_cfg["vocab_size"])
    torch.manual_seed(SEED)
    model = scratch.new_gpt2(tokenizer, model_cfg["n_layer"], model_cfg["n_embd"], model_cfg["n_head"],
                             model_cfg["max_length"])
    model.save_pretrained(sft_dir)
    tokenizer.save_pretrained(sft_dir)
    return {"sft_dir": sft_dir, "rows": train, "max_length": model_cfg["max_length"],
            "source": (f"scratch GPT-2 {model_cfg['n_layer']}x{model_cfg['n_embd']} (untrained weights; throughput "
                       f"does not depend on them), generated grammar data ({len(train)} pairs)")}


def lora_policy(sft_dir: Path, positions: int | None = None):
    """SFT weights + the pipeline's LoRA adapter, as stages/dpo.py builds it. `positions` widens GPT-2's
    position table (for B's 512-token padding on a model trained with fewer positions)."""
    model = loading.load_causal_lm(str(sft_dir))
    if positions:
        widen_positions(model, positions)
    loading.disable_dropout(model)
    return adapters.attach_lora(model, LORA["r"], LORA["alpha"], LORA["dropout"], LORA["target_modules"])


def widen_positions(model, positions: int) -> None:
    """GPT-2 with n_positions < `positions`: append zero rows to the position table. Real tokens keep their
    positions and embeddings (right padding); the new rows are only looked up at padding positions, which no real
    token attends to and no loss term reads. Checked against the unpadded model in `naive_check`."""
    wpe = model.transformer.wpe
    old = wpe.weight.shape[0]
    if positions <= old:
        return
    new = torch.nn.Embedding(positions, wpe.weight.shape[1])
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:old] = wpe.weight
    model.transformer.wpe = new
    model.config.n_positions = positions


class TokenCounter:
    """Counts the rows and positions every forward of the model's backbone runs on, split by grad mode."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.grad_rows = self.grad_tokens = self.grad_real = 0
        self.nograd_tokens = self.nograd_real = 0

    def hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids = args[0]
        if ids is None:
            return
        mask = kwargs.get("attention_mask")
        real = int(mask.sum()) if mask is not None else ids.numel()
        if torch.is_grad_enabled():
            self.grad_rows += ids.shape[0]
            self.grad_tokens += ids.numel()
            self.grad_real += real
        else:
            self.nograd_tokens += ids.numel()
            self.nograd_real += real

    def attach(self, model) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        getattr(base, base.base_model_prefix).register_forward_pre_hook(self.hook, with_kwargs=True)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def result(seconds: float, steps: int, pairs: int, counter: TokenCounter, n_policy: int, n_ref: int,
           others: float | None) -> dict:
    ref_tokens, ref_real = counter.nograd_tokens, counter.nograd_real
    flops = 6 * n_policy * counter.grad_tokens + 2 * n_ref * ref_tokens
    return {"seconds": seconds, "steps": steps, "pairs": pairs,
            "policy_tokens": counter.grad_tokens, "policy_real_tokens": counter.grad_real,
            "reference_tokens": ref_tokens, "reference_real_tokens": ref_real,
            "pairs_per_s": pairs / seconds, "real_tokens_per_s": counter.grad_real / seconds,
            "processed_tokens_per_s": (counter.grad_tokens + ref_tokens) / seconds,
            "padding_share": 1 - (counter.grad_real + ref_real) / max(1, counter.grad_tokens + ref_tokens),
            "gflops": flops / seconds / 1e9, "ms_per_step": 1000 * seconds / steps,
            "others_cpu": others}


def stage_config() -> dict:
    """params.yaml's dpo section with this benchmark's fixed settings (the same for every variant)."""
    return {**load_params()["dpo"], "loss": "sigmoid", "beta": BETA, "lr": LR, "batch_size": BATCH, "epochs": 1,
            "reference": "sft", "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0,
            "max_grad_norm": MAX_GRAD_NORM, "precision": "fp32", "gradient_accumulation_steps": 1,
            "gradient_checkpointing": False}


def batch_schedule(encoded: dict, n_steps: int) -> list[list[int]]:
    """The pipeline's length-grouped batch orders, epoch after epoch, as loop.fit draws them."""
    n = len(encoded["chosen"])
    lengths = [len(encoded["chosen"][i].ids) + len(encoded["rejected"][i].ids) for i in range(n)]
    batches, epoch = [], 1
    while len(batches) < n_steps:
        batches += batch_order(lengths, BATCH, SEED + epoch)
        epoch += 1
    return batches[:n_steps]


# --- variant A: this stage ---------------------------------------------------------------------------------------

def run_stage(ctx: dict, steps: int, warmup: int, meter: CpuMeter) -> dict:
    tokenizer, device = ctx["tokenizer"], torch.device("cpu")
    encoded = encode_pairs(Encoder(tokenizer, ctx["max_length"]), ctx["rows"])

    # The reference stage: SFT log-probs of every training pair, once (forward only, batches of 64).
    reference_model = loading.load_causal_lm(str(ctx["sft_dir"]))
    ref_counter = TokenCounter()
    ref_counter.attach(reference_model)
    start = time.perf_counter()
    reference = {kind: logprobs_of(reference_model, encoded[kind], tokenizer.pad_token_id, device)
                 for kind in ("chosen", "rejected")}
    ref_seconds = time.perf_counter() - start
    n_ref = n_params(reference_model)
    del reference_model

    policy = lora_policy(ctx["sft_dir"])
    counter = TokenCounter()
    counter.attach(policy)
    # The dpo stage's own step, imported: loop.train_step on PairObjective's loss.
    cfg = stage_config()
    run = Process("cpu", cfg)
    objective = PairObjective.on_sequences(run, encoded, reference, cfg, PreferenceLoss.from_params(cfg),
                                           tokenizer.pad_token_id)
    model, optimizer, scheduler = loop.prepare(run, objective.wrap(policy), cfg, len(ctx["rows"]))
    model.train()
    schedule = batch_schedule(encoded, warmup + steps)
    pairs = 0
    for step, idx in enumerate(schedule):
        if step == warmup:
            counter.reset()
            meter.start()
            pairs, start = 0, time.perf_counter()
        loop.train_step(run, model, optimizer, scheduler, objective, idx, cfg["max_grad_norm"])
        pairs += len(idx)
        if step >= warmup:
            meter.check()
    seconds = time.perf_counter() - start
    out = result(seconds, steps, pairs, counter, n_params(policy), n_ref, meter.others())
    out["reference_precompute"] = {
        "seconds": ref_seconds, "pairs": len(ctx["rows"]), "tokens": ref_counter.nograd_tokens,
        "real_tokens": ref_counter.nograd_real, "gflops": 2 * n_ref * ref_counter.nograd_tokens / ref_seconds / 1e9}
    return out


def amortised(a: dict, epochs: int = AMORTISE_EPOCHS) -> dict:
    """A's steady state plus the one-off reference pass, spread over `epochs` passes over the training pairs."""
    ref = a["reference_precompute"]
    pairs = epochs * ref["pairs"]
    seconds = pairs / a["pairs_per_s"] + ref["seconds"]
    per_pair = {k: a[k] / a["pairs"] for k in ("policy_tokens", "policy_real_tokens")}
    flops = a["gflops"] * 1e9 * a["seconds"] / a["pairs"] * pairs + ref["gflops"] * 1e9 * ref["seconds"]
    processed = per_pair["policy_tokens"] * pairs + ref["tokens"]
    real = per_pair["policy_real_tokens"] * pairs + ref["real_tokens"]
    return {"seconds": seconds, "pairs": pairs, "pairs_per_s": pairs / seconds,
            "real_tokens_per_s": per_pair["policy_real_tokens"] * pairs / seconds,
            "processed_tokens_per_s": processed / seconds, "padding_share": 1 - real / processed,
            "gflops": flops / seconds / 1e9, "ms_per_step": 1000 * seconds / (pairs / BATCH)}


# --- variant B: naive, seed 003 style ----------------------------------------------------------------------------

def naive_logps(model, input_ids, attention_mask):
    """The notebook's get_logps: log-probs summed over every non-pad token, prompt included."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = input_ids[..., 1:].contiguous()
    shift_mask = attention_mask[..., 1:].contiguous()
    log_probs = F.log_softmax(shift_logits, dim=-1)
    selected = torch.gather(log_probs, -1, shift_labels.unsqueeze(-1)).squeeze(-1)
    return (selected * shift_mask).sum(dim=-1)


def naive_tokenize(tokenizer, rows: list[dict], pad_to: int) -> dict:
    """The notebook's PreferenceDataset: prompt + answer, padded to max_length, done once for all rows."""
    out = {}
    for kind in ("chosen", "rejected"):
        enc = tokenizer([r["prompt"] + r[kind] for r in rows], return_tensors="pt", truncation=True,
                        padding="max_length", max_length=pad_to)
        out[kind] = (enc["input_ids"], enc["attention_mask"])
    return out


def naive_check(ctx: dict, pad_to: int) -> float:
    """Max |difference| between B's padded (and, if needed, position-widened) log-probs and the SFT model's
    log-probs of the same sequences unpadded: padding must not change what B computes."""
    tokenizer = ctx["tokenizer"]
    rows = ctx["rows"][:BATCH]
    ids, mask = naive_tokenize(tokenizer, rows, pad_to)["chosen"]
    wide = loading.load_causal_lm(str(ctx["sft_dir"]))
    widen_positions(wide, pad_to)
    plain = loading.load_causal_lm(str(ctx["sft_dir"]))
    wide.eval()
    plain.eval()
    worst = 0.0
    with torch.no_grad():
        padded = naive_logps(wide, ids, mask)
        for b, row in enumerate(rows):
            enc = tokenizer(row["prompt"] + row["chosen"], return_tensors="pt")
            alone = naive_logps(plain, enc["input_ids"], enc["attention_mask"])
            worst = max(worst, abs(float(padded[b] - alone[0])))
    return worst


def run_naive(ctx: dict, steps: int, warmup: int, pad_to: int, meter: CpuMeter) -> dict:
    tokenizer = ctx["tokenizer"]
    tokens = naive_tokenize(tokenizer, ctx["rows"], pad_to)
    positions = pad_to if pad_to > ctx["n_positions"] else None
    policy = lora_policy(ctx["sft_dir"], positions)
    reference = loading.load_causal_lm(str(ctx["sft_dir"]))  # the second full copy
    if positions:
        widen_positions(reference, positions)
    reference.eval()
    for p in reference.parameters():
        p.requires_grad = False
    counter = TokenCounter()
    counter.attach(policy)
    counter.attach(reference)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = adamw(trainable, LR, 0.0)
    policy.train()
    schedule = batch_schedule(encode_pairs(Encoder(tokenizer, ctx["max_length"]), ctx["rows"]), warmup + steps)
    pairs = 0
    for step, idx in enumerate(schedule):
        if step == warmup:
            counter.reset()
            meter.start()
            pairs, start = 0, time.perf_counter()
        index = torch.tensor(idx)
        c_ids, c_mask = (t[index] for t in tokens["chosen"])
        r_ids, r_mask = (t[index] for t in tokens["rejected"])
        policy_chosen = naive_logps(policy, c_ids, c_mask)
        policy_rejected = naive_logps(policy, r_ids, r_mask)
        with torch.no_grad():
            ref_chosen = naive_logps(reference, c_ids, c_mask)
            ref_rejected = naive_logps(reference, r_ids, r_mask)
        policy_margin = policy_chosen - policy_rejected
        ref_margin = ref_chosen - ref_rejected
        loss = -F.logsigmoid(BETA * (policy_margin - ref_margin)).mean()
        with torch.no_grad():  # the notebook's per-step metrics
            metrics = {"accuracy": (policy_margin > 0).float().mean().item(), "margin": policy_margin.mean().item(),
                       "kl": 0.5 * ((policy_chosen - ref_chosen).mean() + (policy_rejected - ref_rejected).mean()).item()}
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad()
        loss.item()
        pairs += len(idx)
        if step >= warmup:
            meter.check()
    seconds = time.perf_counter() - start
    return result(seconds, steps, pairs, counter, ctx["n_policy"], ctx["n_sft"], meter.others())


# --- variant C: TRL DPOTrainer -----------------------------------------------------------------------------------

def trl_status() -> tuple[bool, str]:
    try:
        import datasets  # noqa: F401
        import trl
    except Exception as err:  # noqa: BLE001
        return False, f"skipped: trl not installed (pip install '.[bench]'): {type(err).__name__}: {err}"
    return True, f"trl {trl.__version__}"


def run_trl(ctx: dict, steps: int, warmup: int, workdir: Path, meter: CpuMeter) -> dict:
    import datasets
    import trl
    from peft import LoraConfig
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    datasets.disable_progress_bars()

    tokenizer = loading.load_tokenizer(str(ctx["sft_dir"]))
    model = loading.load_causal_lm(str(ctx["sft_dir"]))
    dataset = datasets.Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
                                          for r in ctx["rows"]])
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing (the old name still works, warns).
    fields = getattr(trl.DPOConfig, "__dataclass_fields__", {})
    no_checkpointing = ({"activation_checkpointing": False} if "activation_checkpointing" in fields
                        else {"gradient_checkpointing": False})
    args = trl.DPOConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=BATCH, beta=BETA, loss_type=["sigmoid"],
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=MAX_GRAD_NORM, max_steps=warmup + steps, max_length=ctx["max_length"],
        # Same numerics as A and B: fp32, no activation recomputation (TRL's defaults are bf16 + checkpointing).
        bf16=False, fp16=False, use_cpu=True, **no_checkpointing,
        report_to=[], logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=SEED)
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=LORA["target_modules"], fan_in_fan_out=True, bias="none",
                             task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                 peft_config=peft_config)
    for callback in (PrinterCallback, ProgressCallback):  # no per-run summary lines on stdout
        trainer.remove_callback(callback)
    counter = TokenCounter()
    counter.attach(trainer.model)
    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                counter.reset()
                meter.start()
                marks["start"] = time.perf_counter()
            elif state.global_step == warmup + steps:
                marks["end"] = time.perf_counter()
                marks["others"] = meter.others()
            elif state.global_step > warmup:
                meter.check()

    trainer.add_callback(Timer())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    seconds = marks["end"] - marks["start"]
    n_policy = n_params(trainer.model)
    # The reference is the same weights with the adapter switched off: its forward runs the frozen base.
    out = result(seconds, steps, counter.grad_rows // 2, counter, n_policy, ctx["n_sft"], marks["others"])
    out["activation_checkpointing"] = bool(getattr(trainer.model, "is_gradient_checkpointing", False))
    out["dtype"] = str(next(trainer.model.parameters()).dtype)
    out["trainable"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    shutil.rmtree(workdir / "trl", ignore_errors=True)
    return out


# --- report ------------------------------------------------------------------------------------------------------

def median_row(runs: list[dict]) -> dict:
    out = {}
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if values:
            out[key] = statistics.median(values)
    return out


def fmt_row(name: str, row: dict | None, peak: float, note: str = "") -> str:
    if row is None:
        return f"{name:<38} {note}"
    return (f"{name:<38} {row['pairs_per_s']:>8.1f} {row['real_tokens_per_s']:>11,.0f} "
            f"{row['processed_tokens_per_s']:>13,.0f} {100 * row['padding_share']:>6.1f} "
            f"{row['gflops']:>8.2f} {100 * row['gflops'] / peak:>7.1f} {row['ms_per_step']:>8.1f} "
            + (f"{100 * row['others_cpu']:>7.0f}" if "others_cpu" in row else f"{'':>7}"))


def ratio_text(runs_x: list[dict], runs_y: list[dict]) -> str:
    med = statistics.median(r["pairs_per_s"] for r in runs_x) / statistics.median(r["pairs_per_s"] for r in runs_y)
    paired = [x["pairs_per_s"] / y["pairs_per_s"] for x, y in zip(runs_x, runs_y)]
    return f"{med:.1f}x (per repeat {min(paired):.1f}x .. {max(paired):.1f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run (default 30)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per run (default 3)")
    parser.add_argument("--naive-pad", type=int, default=512, help="B's fixed padding length (default 512)")
    parser.add_argument("--variants", default="ABC", help="which variants to run (default ABC)")
    parser.add_argument("--wait-idle", type=float, default=60, metavar="SECONDS",
                        help="before each run, wait up to SECONDS for other processes to go quiet (default 60; 0: off)")
    parser.add_argument("--contended", type=float, default=0.10, metavar="SHARE",
                        help="a run during which other processes used more than SHARE of the CPU is contended "
                             "(default 0.10)")
    parser.add_argument("--retries", type=int, default=2,
                        help="rerun a contended run up to this many times in its slot; the rerun is kept "
                             "(default 2; discarded runs stay in the JSON)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own, all cores)")
    parser.add_argument("--scratch", action="store_true", help="use a scratch model even if models/sft exists")
    parser.add_argument("--json", default=str(RESULTS), help=f"result file (default {RESULTS.relative_to(REPO)})")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.manual_seed(SEED)

    workdir = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    try:
        ctx = prepare_inputs(workdir, args.scratch)
        ctx["tokenizer"] = loading.load_tokenizer(str(ctx["sft_dir"]))
        sft = loading.load_causal_lm(str(ctx["sft_dir"]))
        ctx["n_sft"], ctx["n_positions"] = n_params(sft), sft.config.n_positions
        policy = lora_policy(ctx["sft_dir"])
        ctx["n_policy"] = n_params(policy)
        n_trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        del sft, policy
        info = machine_info()
        trl_ok, trl_note = trl_status() if "C" in args.variants else (False, "not requested")
        naive_diff = naive_check(ctx, args.naive_pad) if "B" in args.variants else None

        runs: dict[str, list[dict]] = {"A": [], "B": [], "C": []}
        discarded: dict[str, list[dict]] = {"A": [], "B": [], "C": []}
        matmul: list[float] = []
        for rep in range(args.repeats):
            if args.wait_idle:
                wait_for_idle(args.wait_idle)
            matmul.append(matmul_gflops())
            print(f"repeat {rep + 1}/{args.repeats}: matmul {matmul[-1]:.1f} GFLOP/s", end="", flush=True)
            for variant in "ABC":
                if variant not in args.variants or (variant == "C" and not trl_ok):
                    continue
                for attempt in range(args.retries + 1):
                    if args.wait_idle:
                        wait_for_idle(args.wait_idle)
                    last = attempt == args.retries
                    meter = CpuMeter(None if last else args.contended)
                    try:
                        if variant == "A":
                            run = run_stage(ctx, args.steps, args.warmup, meter)
                        elif variant == "B":
                            run = run_naive(ctx, args.steps, args.warmup, args.naive_pad, meter)
                        else:
                            run = run_trl(ctx, args.steps, args.warmup, workdir, meter)
                    except Contended as err:
                        print(f" | {variant} abandoned ({100 * err.share:.0f}% others)", end="", flush=True)
                        discarded[variant].append({"repeat": rep + 1, "attempt": attempt + 1, "abandoned": True,
                                                   "others_cpu": err.share})
                        continue
                    except Exception as err:  # noqa: BLE001 - C may fail on this model; A and B must not
                        if variant != "C":
                            raise
                        trl_ok = False
                        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                        trl_note = f"skipped: TRL DPOTrainer failed: {type(err).__name__}: {first}"
                        (workdir / "trl-error.txt").write_text(traceback.format_exc())
                        print(f" | C failed ({type(err).__name__})", end="", flush=True)
                        break
                    run["repeat"], run["attempt"] = rep + 1, attempt + 1
                    others = run["others_cpu"]
                    contended = others is not None and others > args.contended
                    print(f" | {variant} {run['pairs_per_s']:.1f} pairs/s", end="", flush=True)
                    if others is not None:
                        print(f" (others {100 * others:.0f}% CPU{', contended' if contended else ''})", end="",
                              flush=True)
                    if contended and attempt < args.retries:
                        discarded[variant].append(run)
                        continue
                    runs[variant].append(run)
                    break
            print()

        peak = statistics.median(matmul)
        med = {k: median_row(v) for k, v in runs.items() if v}
        if runs["A"]:
            med["A+ref"] = median_row([amortised(r) for r in runs["A"]])
            med["ref"] = median_row([r["reference_precompute"] for r in runs["A"]])

        lines = []
        lines.append("DPO training throughput: same model, data, LoRA (r8 a16 c_attn+c_proj), AdamW lr 1e-4, "
                     f"batch {BATCH} pairs, beta {BETA}")
        lines.append(f"machine: nproc {info['nproc']}, {info['cpu']}, torch {info['torch']} "
                     f"({info['threads']} threads, {info['interop_threads']} interop), transformers "
                     f"{info['transformers']}, peft {info['peft']}, python {info['python']}")
        lines.append(f"model/data: {ctx['source']}; GPT-2 {ctx['n_sft']:,} params, policy {ctx['n_policy']:,} "
                     f"({n_trainable:,} LoRA trainable), max_length {ctx['max_length']}, n_positions "
                     f"{ctx['n_positions']}")
        lines.append(f"fp32 matmul 1024x1024 @ 1024x1024: {peak:.1f} GFLOP/s median "
                     f"({', '.join(f'{m:.1f}' for m in matmul)})")
        n_discarded = sum(len(v) for v in discarded.values())
        lines.append(f"runs: {args.warmup} warm-up + {args.steps} timed steps, {args.repeats} repeats interleaved "
                     "(A, B, C per repeat); medians over repeats; "
                     + (f"waited up to {args.wait_idle:g} s for a quiet machine before each run; " if args.wait_idle else "")
                     + f"{n_discarded} contended run(s) (others > {100 * args.contended:.0f}% CPU) abandoned and "
                     f"rerun (up to {args.retries} times each; the last attempt is kept whatever its contention)")
        lines.append("")
        lines.append(f"{'variant':<38} {'pairs/s':>8} {'real tok/s':>11} {'padded tok/s':>13} {'pad %':>6} "
                     f"{'GFLOP/s':>8} {'% mm':>7} {'ms/step':>8} {'other %':>7}")
        lines.append(fmt_row("A  this stage (steady state)", med.get("A"), peak,
                             "" if "A" in med else "not run"))
        if "A" in med:
            lines.append(fmt_row(f"A+ref amortised over {AMORTISE_EPOCHS}x{len(ctx['rows'])} pairs", med["A+ref"], peak))
        lines.append(fmt_row(f"B  naive (seed 003 style, pad {args.naive_pad})", med.get("B"), peak,
                             "" if "B" in med else "not run"))
        lines.append(fmt_row("C  TRL DPOTrainer", med.get("C"), peak, "" if "C" in med else trl_note))
        if "ref" in med:
            ref = med["ref"]
            lines.append(f"reference log-probs (A's one-off pass): {ref['seconds']:.3f} s for {int(ref['pairs'])} "
                         f"pairs, {ref['real_tokens'] / ref['seconds']:,.0f} real tok/s forward-only, "
                         f"{ref['gflops']:.2f} GFLOP/s")
        for variant in "ABC":
            if runs[variant]:
                lines.append(f"per repeat, {variant}: pairs/s " + ", ".join(f"{r['pairs_per_s']:.1f}" for r in runs[variant])
                             + "; others' CPU " + ", ".join("?" if r["others_cpu"] is None else
                                                              f"{100 * r['others_cpu']:.0f}%" for r in runs[variant]))
        lines.append("")
        lines.append("ratios of pairs/s (median A / median X; range of the per-repeat paired ratios):")
        if runs["A"] and runs["B"]:
            lines.append(f"  A/B = {ratio_text(runs['A'], runs['B'])};  A+ref/B = "
                         f"{med['A+ref']['pairs_per_s'] / med['B']['pairs_per_s']:.1f}x")
        if runs["A"] and runs["C"]:
            lines.append(f"  A/C = {ratio_text(runs['A'], runs['C'])};  A+ref/C = "
                         f"{med['A+ref']['pairs_per_s'] / med['C']['pairs_per_s']:.1f}x")
        elif runs["A"]:
            lines.append(f"  A/C: n/a ({trl_note})")
        clean = {v: [r for r in runs[v] if r["others_cpu"] is not None and r["others_cpu"] <= args.contended]
                 for v in "ABC"}
        if any(len(clean[v]) < len(runs[v]) for v in "ABC"):
            def pps(v: str) -> float:
                return statistics.median(r["pairs_per_s"] for r in clean[v])
            parts = [f"A/{v} = {pps('A') / pps(v):.1f}x ({len(clean['A'])} vs {len(clean[v])} runs)"
                     for v in "BC" if clean["A"] and clean[v]]
            lines.append(f"  uncontended runs only (other % <= {100 * args.contended:.0f}): "
                         + ("; ".join(parts) if parts else "none for some variant"))
        lines.append("")
        lines.append("real tok/s: non-pad tokens of chosen + rejected trained on per second; padded tok/s: every "
                     "position run through a model (policy and reference); pad %: its padding share; other %: share of the machine's CPU that OTHER processes used during the timed steps "
                     "(a contention flag: above ~10% the numbers are not this machine's best).")
        lines.append(FLOP_FORMULA + " % mm: GFLOP/s as a share of the fp32 matmul rate.")
        if naive_diff is not None:
            widened = (f"B's model has {ctx['n_positions']} positions: its position table is widened to "
                       f"{args.naive_pad} with zero rows used only at padding; "
                       if args.naive_pad > ctx["n_positions"] else "")
            lines.append(f"check: {widened}B's padded log-probs match the unpadded SFT model's to {naive_diff:.1e}.")
        if trl_ok and "C" in med:
            c0 = runs["C"][0]
            lines.append(f"C: {trl_note}, DPOTrainer defaults except: {c0['dtype'].replace('torch.', '')}, activation "
                         f"checkpointing {'on' if c0['activation_checkpointing'] else 'off'} (TRL's defaults are bf16 + "
                         f"checkpointing), constant lr, max_length {ctx['max_length']}; {c0['trainable']:,} trainable; "
                         "reference = the policy with its adapter disabled, a second forward every step; random "
                         "(not length-grouped) batches; log-probs only at completion positions (fused LM head).")
        report = "\n".join(lines)
        print()
        print(report)

        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": info, "matmul_gflops": matmul, "matmul_gflops_median": peak,
            "model": {"source": ctx["source"], "params": ctx["n_sft"], "policy_params": ctx["n_policy"],
                      "trainable": n_trainable, "max_length": ctx["max_length"], "n_positions": ctx["n_positions"]},
            "settings": {"steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "batch": BATCH,
                         "lr": LR, "beta": BETA, "lora": LORA, "naive_pad": args.naive_pad,
                         "amortise_epochs": AMORTISE_EPOCHS},
            "trl": trl_note, "naive_check_max_abs_diff": naive_diff, "flop_formula": FLOP_FORMULA,
            "runs": runs, "discarded_contended_runs": discarded, "medians": med, "report": report,
        }, indent=2) + "\n")
        shown = out.resolve().relative_to(REPO) if out.resolve().is_relative_to(REPO) else out
        print(f"\nwrote {shown}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
